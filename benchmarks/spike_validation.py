"""Validate the spike detector on labelled real runs and choose its defaults from the evidence.

Trains tiny ViT_P / ViT_C runs on digits with every step traced: SGD at lrs from stable to
diverging (divergence somewhere after warmup) and AdamW at stable lrs, then scores detector
settings on the per-step total gradient norm and on the per-layer traces:

- recall: diverged runs with a spike in the ``N`` steps before the divergence step (the step
  itself excluded: its norm is the divergence, not a warning);
- precision: spikes followed by a divergence within ``N`` steps, over all spikes of all runs;
- false positives per 1,000 steps on runs that completed.

    python benchmarks/spike_validation.py                # ~6 min on 2 cores
    python benchmarks/spike_validation.py --results DIR  # reuse (or keep) the runs
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import append_results  # noqa: E402
from stability import analysis, store  # noqa: E402

HORIZON = 20  # N: "a spike precedes divergence within N steps"


def run_grid(results: Path, seeds: list[int]) -> None:
    base = {"dataset": "digits", "model": "vit_tiny", "epochs": 3, "warmup_epochs": 1,
            "batch_size": 64, "trace_every": 1}
    specs = [
        ("spk_sgd", {"optimizer": "sgd", "wd": 1e-4},
         {"stem": ["patchify", "conv"], "lr": [float(v) for v in np.geomspace(0.03, 0.6, 8).round(4)]}),
        ("spk_adamw", {"optimizer": "adamw", "wd": 0.05},
         {"stem": ["patchify", "conv"], "lr": [1e-3, 3e-3, 1e-2]}),
    ]
    for name, extra, space in specs:
        spec = {"name": name, "base": {**base, **extra}, "space": space,
                "sampler": {"name": "grid", "n": 1, "seed": 0}, "seeds": seeds,
                "executor": {"kind": "local", "max_parallel": 2, "timeout_min": 30},
                "results": str(results)}
        path = results / f"{name}.yaml"
        results.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        subprocess.run([sys.executable, "-m", "stability", "grid", "run", str(path), "--quiet"], check=True)


def score(runs: pd.DataFrame, traces: pd.DataFrame, params: analysis.SpikeParams,
          column: str) -> dict[str, float]:
    """Recall, precision and stable-run false positives of one setting on one kind of trace."""
    div = runs.set_index("run_id").diverged_at_step.dropna()
    marked = analysis.mark_spikes(traces, value=column, params=params)
    spikes = marked[marked.spike]
    warned = 0
    for rid, d in div.items():
        s = spikes[(spikes.run_id == rid) & (spikes.step < d) & (spikes.step >= d - HORIZON)]
        warned += len(s) > 0
    followed = sum(1 for r in spikes.itertuples()
                   if r.run_id in div.index and 0 < div[r.run_id] - r.step <= HORIZON)
    stable = runs[runs.status == "completed"].run_id
    stable_steps = traces[traces.run_id.isin(stable)].step.nunique() and \
        traces[traces.run_id.isin(stable)].groupby("run_id").step.nunique().sum()
    fp = spikes[spikes.run_id.isin(stable)]
    fp_units = fp.groupby(["run_id", "step"]).ngroups  # a step flagged in several layers once
    return {"recall": warned / max(len(div), 1), "precision": followed / len(spikes) if len(spikes) else np.nan,
            "fp_per_1000": 1000 * fp_units / max(stable_steps, 1), "n_spikes": len(spikes)}


def score_loss(runs: pd.DataFrame, steps: pd.DataFrame, k: float) -> dict[str, float]:
    """The same scores for a plain alternative: the loss first above ``k`` x ln(classes)."""
    bound = k * np.log(10)
    div = runs.set_index("run_id").diverged_at_step.dropna()
    above = steps[steps.loss > bound]
    first = above.groupby("run_id").step.min()
    warned = sum(1 for rid, d in div.items() if rid in first.index and d - HORIZON <= first[rid] < d)
    stable = runs[runs.status == "completed"].run_id
    alarms = first[first.index.isin(div.index) | first.index.isin(stable)]
    good = sum(1 for rid, s in alarms.items() if rid in div.index and 0 < div[rid] - s <= HORIZON)
    stable_steps = steps[steps.run_id.isin(stable)].groupby("run_id").step.nunique().sum()
    fp = int(first.index.isin(stable).sum())
    return {"recall": warned / max(len(div), 1), "precision": good / len(alarms) if len(alarms) else np.nan,
            "fp_per_1000": 1000 * fp / max(stable_steps, 1), "n_spikes": len(alarms)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=Path, default=None, help="results root to fill or reuse")
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    tmp = None
    if args.results is None:
        tmp = tempfile.TemporaryDirectory(prefix="spike_validation_")
        args.results = Path(tmp.name)
    run_grid(args.results, list(range(args.seeds)))
    res = store.load(args.results)
    runs = res.runs[res.runs.sweep.isin(["spk_sgd", "spk_adamw"])]
    n_div, n_ok = int((runs.status == "diverged").sum()), int((runs.status == "completed").sum())
    late = runs[(runs.status == "diverged") & (runs.diverged_at_step > HORIZON)]
    steps = res.steps[res.steps.run_id.isin(runs.run_id)].assign(layer="total", depth=0)
    layers = res.grad_norms[res.grad_norms.run_id.isin(runs.run_id)]
    rows = []
    for window, factor, z in itertools.product((50, 100, 200), (1.5, 2.0, 3.0), (4.0, 6.0, 8.0)):
        p = analysis.SpikeParams(window=window, factor=factor, z=z)
        for trace, df, col in (("total", steps, "grad_norm"), ("per-layer", layers, "grad_norm")):
            rows.append({"window": window, "factor": factor, "z": z, "trace": trace, **score(runs, df, p, col)})
    table = pd.DataFrame(rows)
    loss_rows = [{"k": k, **score_loss(runs, res.steps[res.steps.run_id.isin(runs.run_id)], k)}
                 for k in (1.5, 2.0, 3.0)]
    default = analysis.SpikeParams()
    lines = [f"{len(runs)} runs (vit_tiny P/C on digits, 3 epochs, every step traced): {n_ok} completed, "
             f"{n_div} diverged ({len(late)} after step {HORIZON}); horizon N = {HORIZON} steps.",
             f"Default now: window {default.window}, factor {default.factor}, z {default.z}, "
             f"min_points {default.min_points}.", "",
             "| trace | window | factor | z | recall | precision | FP / 1k stable steps | spikes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table.sort_values(["trace", "fp_per_1000", "recall"], ascending=[True, True, False]).itertuples():
        lines.append(f"| {r.trace} | {r.window} | {r.factor:g} | {r.z:g} | {r.recall:.2f} | "
                     f"{r.precision:.2f} | {r.fp_per_1000:.2f} | {r.n_spikes} |")
    lines += ["", "For comparison, a plain alternative warning (one alarm per run: the first step whose "
              "loss exceeds k x ln 10):", "", "| k | recall | precision | FP / 1k stable steps | alarms |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['k']:g} | {r['recall']:.2f} | {r['precision']:.2f} | {r['fp_per_1000']:.2f} | {r['n_spikes']} |"
              for r in loss_rows]
    append_results("Spike detector validation (benchmarks/spike_validation.py)", lines)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
