"""Soak: a grid run to the end while a chaos loop kills and corrupts, against the same grid run
calmly, on the local backend or through Slurm. Reports runs completed, duplicates (one run trained
by two live jobs at once), runs lost, tracebacks seen in controller output, and the wall-time
overhead of the chaos.

Chaos, at random moments (seeded): SIGKILL the controller (``--kills`` times, then it is started
again), kill a random running run, start a second controller (it must exit 2 naming the first),
and corrupt three result files once (a truncated runs file, a garbage epochs file, a garbage
checkpoint). On Slurm a run is killed three ways in turn: ``scancel`` its job, ``scontrol
requeue`` it, or SIGKILL its job step's Python process (what a node's OOM killer does). The grid
ends when a controller exits 0 with every run done.

    python benchmarks/faults.py [--runs 40] [--kills 10] [--seed 0] [--backend local|slurm]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results  # noqa: E402

from stability import store  # noqa: E402
from stability.grid.local import pid_alive  # noqa: E402
from stability.grid.samplers import make_plan  # noqa: E402
from stability.grid.spec import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_spec(d: Path, name: str, runs: int, backend: str = "local") -> Path:
    spec = {"name": name, "results": str(d / "res"),
            "base": {"dataset": "digits", "model": "vit_tiny", "epochs": 2, "steps_per_epoch": 8,
                     "batch_size": 32, "trace_every": 4},
            "space": {"stem": ["patchify", "conv"], "lr": {"loguniform": [1e-4, 1e-2]}},
            "sampler": {"name": "sobol", "n": runs // 2, "seed": 0}, "seeds": [0],
            "executor": {"kind": "local", "max_parallel": 2, "timeout_min": 30} if backend == "local" else
            {"kind": "slurm", "cpus_per_task": 1, "mem_gb": 2, "timeout_min": 30, "max_parallel": 2}}
    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def controller(spec: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stability", "grid", "run", str(spec), "--quiet"], cwd=ROOT,
                            stdout=open(log, "a"), stderr=subprocess.STDOUT)


def calm(spec: Path, log: Path) -> float:
    t = time.monotonic()
    p = controller(spec, log)
    p.wait()
    return time.monotonic() - t


def corrupt_three(res: Path, sweep: str, rng: random.Random) -> list[str]:
    done = sorted((res / f"runs/sweep={sweep}").glob("*.parquet"))
    epochs = sorted((res / f"epochs/sweep={sweep}").glob("*.parquet"))
    ckpts = sorted((res / f"_sweeps/{sweep}/checkpoints").glob("*.pt"))
    out = []
    if done:
        p = rng.choice(done)
        p.write_bytes(p.read_bytes()[:50])
        out.append(f"truncated {p.name}")
    if epochs:
        p = rng.choice(epochs)
        p.write_bytes(b"garbage")
        out.append(f"garbage epochs {p.name}")
    if ckpts:
        p = rng.choice(ckpts)
        p.write_bytes(b"\x80\x04garbage")
        out.append(f"garbage checkpoint {p.name}")
    return out


def kill_a_run(live: dict[str, list[str]], backend: str, rng: random.Random, how: dict[str, int]) -> None:
    """Kill one running run: SIGKILL its process (local); on Slurm scancel, requeue or SIGKILL
    its job step's Python process, in turn."""
    jobs = sorted(j for js in live.values() for j in js)
    if not jobs:
        return
    job = rng.choice(jobs)
    if backend == "local":
        subprocess.run(["kill", "-9", job.split(".")[0]], capture_output=True)
        how["sigkill"] = how.get("sigkill", 0) + 1
        return
    way = ("scancel", "requeue", "step_sigkill")[sum(how.values()) % 3]
    if way == "scancel":
        subprocess.run(["scancel", job], capture_output=True)
    elif way == "requeue":
        subprocess.run(["scontrol", "requeue", job], capture_output=True)
    else:
        listed = subprocess.run(["scontrol", "listpids", job], capture_output=True, text=True).stdout.split()
        pids = listed[5::5]  # after the header: PID JOBID STEPID LOCALID GLOBALID
        python = [p for p in pids if p.isdigit() and "python" in _cmdline(p)]
        if not python:
            return
        subprocess.run(["kill", "-9", *python], capture_output=True)
    how[way] = how.get(way, 0) + 1


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def chaos(spec_path: Path, log: Path, kills: int, seed: int, backend: str = "local") -> dict:
    rng = random.Random(seed)
    spec = load_spec(spec_path)
    res = Path(spec.results)
    t = time.monotonic()
    ctl = controller(spec_path, log)
    killed_ctl = second_refused = second_other = 0
    how: dict[str, int] = {}
    corrupted: list[str] = []
    duplicates: set[str] = set()
    restarts = 0
    while True:
        time.sleep(rng.uniform(2.0, 6.0))
        live = live_jobs(spec.sweep_dir / "jobs.jsonl", backend)
        duplicates |= {r for r, pids in live.items() if len(set(pids)) > 1}
        if ctl.poll() is not None:
            if ctl.returncode == 0 and _all_done(res, spec):
                break
            ctl = controller(spec_path, log)  # it ended (killed runs leave work): run it again
            restarts += 1
            continue
        action = rng.random()
        if action < 0.3 and killed_ctl < kills:
            ctl.send_signal(signal.SIGKILL)
            ctl.wait()
            killed_ctl += 1
            ctl = controller(spec_path, log)
        elif action < 0.6:
            kill_a_run(live, backend, rng, how)
        elif action < 0.75:
            second = subprocess.run([sys.executable, "-m", "stability", "grid", "run", str(spec_path), "--quiet"],
                                    cwd=ROOT, capture_output=True, text=True)
            with open(log, "a") as f:
                f.write(second.stdout + second.stderr)
            if second.returncode == 2 and "is being run by" in second.stderr:
                second_refused += 1
            else:
                second_other += 1
        elif not corrupted and killed_ctl >= kills // 2:
            corrupted = corrupt_three(res, spec.name, rng)
    wall = time.monotonic() - t
    return {"wall": wall, "killed_controller": killed_ctl, "killed_runs": how, "restarts": restarts,
            "second_refused": second_refused, "second_other": second_other, "corrupted": corrupted,
            "duplicates": len(duplicates)}


def live_jobs(ledger: Path, backend: str = "local") -> dict[str, list[str]]:
    """Every job of the ledger (not only each run's latest) that is running now, per run: its
    pid lives (local), or Slurm says RUNNING."""
    running = set()
    if backend == "slurm":
        out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i"], capture_output=True, text=True).stdout
        running = set(out.split())
    live: dict[str, list[str]] = {}
    lines = ledger.read_text(errors="replace").splitlines() if ledger.exists() else []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict) or "kind" not in rec:
            continue
        job = str(rec.get("job_id"))
        if job in running if backend == "slurm" else pid_alive(job):
            live.setdefault(str(rec.get("run_id")), []).append(job)
    return {r: sorted(set(js)) for r, js in live.items()}


def _all_done(res: Path, spec) -> bool:
    runs = store.read_table(res, "runs", sweep=spec.name, columns=["status"])
    return len(runs) > 0 and runs.status.isin(store.DONE).all()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", choices=("local", "slurm"), default="local")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        calm_wall = calm(write_spec(d, "calm", args.runs, args.backend), d / "calm.log")
        spec_path = write_spec(d, "chaos", args.runs, args.backend)
        out = chaos(spec_path, d / "chaos.log", args.kills, args.seed, args.backend)
        spec = load_spec(spec_path)
        planned = {r.run_id for r in make_plan(spec)}
        log = (d / "chaos.log").read_text(errors="replace")
        tracebacks = log.count("Traceback")
        quarantined = log.count("quarantined ")
        left_corrupt = len(store.unreadable(spec.results, spec.name))  # before the closing pass
        final = subprocess.run([sys.executable, "-m", "stability", "grid", "run", str(spec_path), "--quiet"],
                               cwd=ROOT, capture_output=True, text=True)  # what an operator does next
        runs = store.read_table(spec.results, "runs", sweep=spec.name)
        done = set(runs.run_id[runs.status.isin(store.DONE)])
        unreadable_after = len(store.unreadable(spec.results, spec.name))
        tracebacks += (final.stdout + final.stderr).count("Traceback")
        calm_err = store.read_table(d / "res", "runs", sweep="calm").set_index("run_id").top1_err.sort_index()
        chaos_err = runs.set_index("run_id").top1_err.sort_index()
        same = bool(calm_err.equals(chaos_err)) if set(calm_err.index) == set(chaos_err.index) else "other run ids"
    lines = [f"A {args.runs}-run {args.backend} grid (vit_tiny, 2 epochs x 8 steps, 2 at a time) run calmly, "
             f"then run under chaos (seed {args.seed}).", "",
             "| measure | value |", "|---|---|",
             f"| runs planned / completed or diverged | {len(planned)} / {len(done & planned)} |",
             f"| runs lost (planned, no result at the end) | {len(planned - done)} |",
             f"| duplicates (a run with two live jobs at once) | {out['duplicates']} |",
             f"| tracebacks in controller output | {tracebacks} |",
             f"| controller SIGKILLs / restarts after a normal exit | {out['killed_controller']} / {out['restarts']} |",
             f"| runs killed (how: count) | {', '.join(f'{k}: {v}' for k, v in out['killed_runs'].items()) or 'none'} |",
             f"| second controllers refused (exit 2, holder named) / other outcome | {out['second_refused']} / "
             f"{out['second_other']} |",
             f"| files corrupted / quarantine lines during chaos | {', '.join(out['corrupted']) or 'none'} / "
             f"{quarantined} |",
             f"| unreadable files when the chaos ended / after one more `grid run` | {left_corrupt} / "
             f"{unreadable_after} |",
             f"| top-1 errors equal to the calm run's (same run ids) | {same} |",
             f"| wall: calm / chaos (overhead) | {calm_wall:.0f} s / {out['wall']:.0f} s "
             f"({out['wall'] / calm_wall:.2f}x) |"]
    append_results(f"Fault soak (benchmarks/faults.py, {args.backend})", lines)


if __name__ == "__main__":
    main()
