"""What a study's runs take on this machine's CPUs, timed here.

The GPU-hour planner (``cost``) says nothing of a laptop: a spec whose local jobs ask for no GPU
is costed here instead. Each group's training step (its model, per-rank batch, image size,
optimizer and gradient tracing, with the torch threads a local job gets) is run a few times on
random images; a run takes its training steps at that rate plus its evaluation images at
:data:`~stability.grid.cost.EVAL_SPEEDUP` x the step's img/s, and the runs are laid over the
executor's parallel slots. Steps are timed alone: parallel runs share memory bandwidth and other
work shares the cores, so the figure is a floor; diverged and pruned runs end early, so it is a
ceiling for them. Reading and decoding image files (``imagefolder``, ``packed``) is not timed (the
step runs on random tensors), and the text says so.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

from ..config import RunConfig
from ..data.workers import IMAGE_FILES
from .backends import local_threads
from .cost import EVAL_SPEEDUP, data_sizes, eval_images, flops_per_image, images_seen, model_key

# A step above this many multiply-adds (forward, per rank; the step is ~3x) is not timed: it takes
# seconds on a CPU (a dry run times five), a paper-size ViT at batch 256 (~1e12) minutes. The
# CPU grids' steps are 0.3-1.2e10 (vit_tiny / vit_small at 32 px, batch 64-128).
MAX_STEP_MACS = 3e10
TIMED_STEPS = 3  # after one warm-up step; one traced step is timed besides
CLASSES = {"cifar100": 100, "imagefolder": 1000, "packed": 1000}  # else 10
# Config fields besides the planner's groups' that change a step's time on a CPU.
TIME_FIELDS = ("optimizer", "optimizer_impl", "trace_every", "trace_attention", "qk_norm", "freeze_stem")


@dataclass(frozen=True)
class GroupTime:
    """One group of runs: how many, seconds per training step (None: not timed, ``why``), and
    seconds per run (training steps + evaluation)."""

    runs: int
    model: str  # and its optimizer: "vit_p_tiny adamw"
    batch: int
    step_s: float | None
    run_s: float | None
    why: str = ""
    files: str = ""  # its dataset when its images are decoded from files (IMAGE_FILES), untimed


@dataclass(frozen=True)
class LocalTime:
    """A study's runs on this machine: per group, and laid over ``slots`` parallel jobs of
    ``threads`` torch threads each."""

    groups: tuple[GroupTime, ...]
    slots: int
    threads: int

    @property
    def timed(self) -> bool:
        return all(g.run_s is not None for g in self.groups)

    @property
    def run_s(self) -> float:
        """Seconds of every run one after another."""
        return sum(g.runs * g.run_s for g in self.groups if g.run_s is not None)

    @property
    def wall_s(self) -> float:
        """The study's wall time on ``slots`` slots, at least its longest run (a floor: runs
        packed perfectly)."""
        longest = max((g.run_s for g in self.groups if g.run_s is not None and g.runs), default=0.0)
        return max(self.run_s / max(self.slots, 1), longest)

    def steps_text(self) -> str:
        """The steps timed, once each."""
        return ", ".join(dict.fromkeys(f"{g.model} batch {g.batch} {g.step_s * 1e3:,.0f} ms"
                                       for g in self.groups if g.step_s is not None))

    def text(self, name: str, detail: bool = True) -> str:
        """One line for a dry run (``detail``: how it was timed, for a study on its own)."""
        if not self.groups:
            return f"{name}: nothing to train on this machine"
        if not self.timed:
            untimed = "; ".join(dict.fromkeys(f"{g.model}: {g.why}" for g in self.groups if g.step_s is None))
            return f"{name}: not timed on this machine ({untimed})"
        return f"{name}: ~{_duration(self.wall_s)} on this machine" + (f" ({self.how()})" if detail else "")

    def how(self) -> str:
        plural = "s" if self.threads != 1 else ""
        files = ", ".join(dict.fromkeys(g.files for g in self.groups if g.files))
        # the step is timed on random tensors: a run on image files also reads and decodes each one
        decoding = (f"; image decoding not included ({files}: every image is read and decoded from its "
                    "file, not timed here)" if files else "")
        return (f"{self.slots} at a time, {self.threads} thread{plural} each; steps timed here just now: "
                f"{self.steps_text()}; evaluation at ~{EVAL_SPEEDUP:g}x the step's img/s, an estimate{decoding}; "
                f"a floor: parallel runs and other work share the cores")


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min" if s < 5400 else f"{s / 3600:.1f} h"


def time_step(cfg: RunConfig, px: int, batch: int, threads: int, steps: int = TIMED_STEPS) -> float:
    """Seconds per training step of ``cfg``'s model at ``px`` pixels on this CPU at ``batch`` images, with
    ``threads`` torch threads (restored after): ``steps`` untraced steps after a warm-up, plus one
    traced step counted once every ``trace_every``."""
    import torch

    from ..models import build_model, model_spec
    from ..trainer.optim import make_optimizer
    from ..trainer.step import Step, train_step
    from ..trainer.tracing import GradTracer

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        spec = model_spec(cfg.model, cfg.stem, num_classes=CLASSES.get(cfg.dataset, 10), image_size=px)
        g = torch.Generator().manual_seed(0)
        model = build_model(spec, freeze_stem=cfg.freeze_stem, qk_norm=cfg.qk_norm)
        opt = make_optimizer(cfg, model, "cpu")
        step = Step(net=model, opt=opt, tracer=GradTracer(model, torch.device("cpu"), attention=cfg.trace_attention),
                    accum_steps=1, label_smoothing=cfg.label_smoothing, z_loss=cfg.z_loss)
        x = torch.randn(batch, 3, spec.image_size, spec.image_size, generator=g)
        y = torch.randint(0, spec.num_classes, (batch,), generator=g)
        lr = min(cfg.lr, 1e-4)  # how fast a step is does not depend on it; a small one stays finite

        def timed(n: int, trace: bool) -> float:
            """The fastest of ``n`` steps: other work on the cores only ever slows one down."""
            best = math.inf
            for _ in range(n):
                t = time.perf_counter()
                train_step(step, x, y, lr, trace=trace).loss.item()
                best = min(best, time.perf_counter() - t)
            return best

        timed(1, True)  # warm-up: first-call allocations
        plain = timed(steps, False)
        traced = timed(1, True)
        return plain + max(traced - plain, 0.0) / max(cfg.trace_every, 1)
    finally:
        torch.set_num_threads(before)


def step_time(cfg: RunConfig, executor: Any, threads: int) -> GroupTime:
    """``cfg``'s training step on this machine, per rank (the global batch over the local ranks;
    accumulation steps add up): a :class:`GroupTime` of no runs yet, or untimed with why."""
    import torch

    batch = max(cfg.batch_size // (max(executor.tasks_per_node, 1) * max(cfg.accum_steps, 1)), 1)
    model, px = model_key(cfg)
    name = f"{model} {cfg.optimizer}"
    if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()):
        return GroupTime(0, name, batch, None, None, "its runs use this machine's GPU: see the GPU-hours")
    macs = flops_per_image(model, px) * batch  # the planner's count (models/complexity.json)
    if macs > MAX_STEP_MACS:
        return GroupTime(0, name, batch, None, None, f"a step of {macs:.2g} multiply-adds, over the "
                         f"{MAX_STEP_MACS:.0e} a dry run times on a CPU")
    return GroupTime(0, name, batch, time_step(cfg, px, batch, threads) * max(cfg.accum_steps, 1), None)


def local_time(groups: list[tuple[RunConfig, int]], executor: Any,
               steps: dict[tuple, GroupTime] | None = None) -> LocalTime:
    """What ``groups`` take on this machine under ``executor``: each run its training steps at
    the timed rate plus its evaluation.

    Args:
        groups: ``(config, runs)`` pairs, ``plan.config_groups`` over the planner's fields and
            :data:`TIME_FIELDS`.
        executor: a local ``ExecutorSpec`` (its slots and ranks).
        steps: the steps timed so far, by timing key; filled in. Groups that share a step (they
            differ in length, data or lr) are timed once, across the studies that share it.

    Returns:
        The :class:`LocalTime`.
    """
    threads = local_threads(executor)
    steps = {} if steps is None else steps
    out = []
    for cfg, n in groups:
        key = (cfg.model, cfg.stem, cfg.image_size, cfg.batch_size, cfg.accum_steps, cfg.dataset, cfg.device,
               *(getattr(cfg, f) for f in TIME_FIELDS), cfg.label_smoothing > 0, cfg.z_loss > 0, threads,
               executor.tasks_per_node)
        t = steps.get(key) or steps.setdefault(key, step_time(cfg, executor, threads))
        run_s = None
        if t.step_s is not None:
            sizes = data_sizes(cfg)
            run_s = (images_seen(cfg, sizes) + eval_images(cfg, sizes) / EVAL_SPEEDUP) / max(cfg.batch_size, 1) * t.step_s
        out.append(dataclasses.replace(t, runs=n, run_s=run_s, files=cfg.dataset if cfg.dataset in IMAGE_FILES else ""))
    return LocalTime(tuple(out), max(executor.max_parallel, 1), threads)


def total_text(times: list[tuple[str, LocalTime]]) -> str | None:
    """One line for studies run one after another (a reproduction), and how they were timed;
    None when any is not timed."""
    if not times or not all(t.timed for _, t in times):
        return None
    wall = sum(t.wall_s for _, t in times)
    merged = LocalTime(tuple(g for _, t in times for g in t.groups), times[0][1].slots, times[0][1].threads)
    return f"on this machine: ~{_duration(wall)} in all, the studies one after another ({merged.how()})"


def is_local_cpu(executor: Any, kind: str) -> bool:
    """Whether ``executor`` runs its jobs as local processes without a GPU (``kind``: resolved)."""
    return kind == "local" and not (executor.gpus_per_node or executor.gpus_per_task)

