"""The cost planner: GPU-hours of planned runs from MEASURED img/s (``models/throughput.json``).

A group of runs that agree on the cost fields takes images seen / img/s GPU-seconds, where img/s
is the lower of the training step alone (measured for the device, model, image size, per-GPU
batch and compile) and the input pipeline's bound (CPU workers x a measured per-worker rate, the
measured GPU-decode rate, or none for in-memory data). Taking the lower assumes the two overlap
perfectly: a best case (measured on the H200, CPU decode fed ~0.8x of the loader alone, RESULTS.md).
Whatever the table lacks is filled in one stated way, and every figure says which it used:
``measured``, ``scaled from <row> measured`` (by FLOPs per image; same device and compile), or
``flops-estimate`` (FLOPs at :data:`MFU` of the device's peak). Torch-free when the models are in
``models/complexity.json``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import RunConfig, resolve_compile
from ..data.workers import DECODED
from ..models.presets import canonical_name, resolve
from ..models.throughput import DecodeRate, Device, StepRate, Throughput

MFU = 0.10  # the FLOPs fallback: about what an eager 4GF ViT reached on the H200 (10-14%, RESULTS.md)
# Config fields besides plan.COST_FIELDS that decide a run's img/s.
RATE_FIELDS = ("compile", "accum_steps", "decode", "num_workers", "auto_augment", "device")


@dataclass(frozen=True)
class Rate:
    """An img/s and where it came from (``img_s`` None: no bound)."""

    img_s: float | None
    source: str


@dataclass(frozen=True)
class GroupCost:
    """The cost of ``runs`` runs of one configuration (seeds and sampled values apart)."""

    runs: int
    images: float  # training images seen by all of them
    flops: float  # training FLOPs (forward + backward)
    step: Rate
    feed: Rate  # the input pipeline's bound
    bound: str  # what bounds the feed: "15 CPU workers", "GPU decode", "none"

    @property
    def img_s(self) -> float:
        return min(self.step.img_s, self.feed.img_s or math.inf)

    @property
    def gpu_hours(self) -> float:
        return self.images / self.img_s / 3600


@dataclass(frozen=True)
class StudyCost:
    """A study's groups, and its totals; rates over groups are image-weighted (harmonic)."""

    name: str
    device: Device
    groups: tuple[GroupCost, ...]

    @property
    def runs(self) -> int:
        return sum(g.runs for g in self.groups)

    @property
    def images(self) -> float:
        return sum(g.images for g in self.groups)

    @property
    def flops(self) -> float:
        return sum(g.flops for g in self.groups)

    @property
    def gpu_hours(self) -> float:
        return sum(g.gpu_hours for g in self.groups)

    def _rate(self, rate: Callable[[GroupCost], float | None]) -> float | None:
        bounded = [g for g in self.groups if rate(g) is not None]
        return sum(g.images for g in bounded) / sum(g.images / rate(g) for g in bounded) if bounded else None

    @property
    def step_img_s(self) -> float | None:
        return self._rate(lambda g: g.step.img_s)

    @property
    def feed_img_s(self) -> float | None:
        return self._rate(lambda g: g.feed.img_s)

    @property
    def img_s(self) -> float | None:
        return self._rate(lambda g: g.img_s)

    def _joined(self, part: Callable[[GroupCost], str]) -> str:
        return " / ".join(dict.fromkeys(part(g) for g in self.groups)) or "-"

    @property
    def bound(self) -> str:
        return self._joined(lambda g: g.bound)

    @property
    def source(self) -> str:
        return f"step {self._joined(lambda g: g.step.source)}; input {self._joined(lambda g: g.feed.source)}"

    def as_dict(self) -> dict[str, Any]:
        return {"study": self.name, "device": self.device.name, "runs": self.runs, "images": self.images,
                "train_flops": self.flops, "step_img_s": self.step_img_s, "input_img_s": self.feed_img_s,
                "input_bound": self.bound, "img_s": self.img_s, "gpu_hours": self.gpu_hours, "source": self.source}


def images_seen(cfg: RunConfig) -> int:
    """Training images one run of ``cfg`` sees (full global batches, ``steps_per_epoch`` capped;
    the ``test_split`` images held out of training)."""
    from ..data.datasets import SIZES

    n_train = (SIZES[cfg.dataset][0] or cfg.synthetic_size) - (cfg.test_split or 0)
    per_epoch = n_train // cfg.batch_size
    return cfg.epochs * min(per_epoch, cfg.steps_per_epoch or per_epoch) * cfg.batch_size


def model_key(cfg: RunConfig) -> tuple[str, int]:
    """``(canonical preset name, image size)`` of a run: ``("vit_p_4gf", 224)``; a RegNet keeps its name."""
    from ..data.datasets import SIZES

    size, stem = resolve(cfg.model, cfg.stem)
    return (canonical_name(size, stem) if stem else size), cfg.image_size or SIZES[cfg.dataset][1]


@functools.cache
def flops_per_image(model: str, image_size: int) -> float:
    """Multiply-accumulates of one forward pass (``models/complexity.json``, else counted)."""
    from ..models import model_spec
    from ..models.table import complexity

    return complexity(model_spec(model, image_size=image_size))["flops"]


def step_rate(table: Throughput, device: Device, model: str, image_size: int, batch: int, compile: bool,
              flops: Callable[[str, int], float] = flops_per_image) -> Rate:
    """The step-alone img/s of ``model`` on one ``device``: the measured row, else the nearest
    measured ViT row of the device with the same ``compile`` scaled by FLOPs per image (same
    MFU), else FLOPs at :data:`MFU` of the device's peak."""
    rows = [r for r in table.step if r.device == device.name and r.compile == compile]
    for r in rows:
        if (r.model, r.image_size, r.batch) == (model, image_size, batch):
            return Rate(r.img_s, "measured")
    if rows and model.startswith("vit_"):
        def distance(r: StepRate) -> tuple:
            return (r.model[:5] != model[:5], r.model != model, r.image_size != image_size,
                    abs(math.log(r.batch / max(batch, 1))))
        r = min(rows, key=distance)
        scale = flops(r.model, r.image_size) / flops(model, image_size)
        caveat = (f" (x{scale:.0f} fewer FLOPs: a small model is bound by per-step overhead on a GPU, "
                  f"so this rate is optimistic)" if scale > 10 else "") + _batch_caveat(table, device, r, batch)
        return Rate(r.img_s * scale, f"scaled from {r.model} {r.image_size} px batch {r.batch} "
                                     f"{'compiled' if r.compile else 'eager'} measured{caveat}")
    per_image = 3 * 2 * flops(model, image_size)  # MACs -> FLOPs, forward + backward
    return Rate(device.peak_bf16_tflops * 1e12 * MFU / per_image,
                f"flops-estimate at {MFU:.0%} MFU of {device.peak_bf16_tflops:g} TFLOP/s")


def _batch_caveat(table: Throughput, device: Device, row: StepRate, batch: int) -> str:
    """A rate taken at ``row``'s batch for another ``batch`` says so, and what the other mode's
    rows of that network show across the two batches when both are measured (e.g. eager at 128 vs
    256 when only a compiled 256 was); "" at the row's own batch."""
    if row.batch == batch:
        return ""
    other = {r.batch: r.img_s for r in table.step if r.device == device.name and r.compile != row.compile
             and (r.model, r.image_size) == (row.model, row.image_size)}
    if batch not in other or row.batch not in other:
        return f" (batch {batch} unmeasured: taken at batch {row.batch}'s rate)"
    mode = "eager" if row.compile else "compiled"
    return (f" (batch {batch} unmeasured: taken at batch {row.batch}'s rate; {mode}, {row.model} runs "
            f"x{other[batch] / other[row.batch]:.2f} as fast at batch {batch} as at {row.batch})")


def _host_rows(rows: tuple[DecodeRate, ...], device: Device) -> list[DecodeRate]:
    """The rows measured on the device's own machine, else on any machine."""
    return [r for r in rows if r.device == device.name] or list(rows)


def _widest(rows: list[DecodeRate], dataset: str, policy: str) -> DecodeRate | None:
    """The row of (dataset, policy) with the most workers (the per-worker rate at scale)."""
    hits = [r for r in rows if (r.dataset, r.policy) == (dataset, policy)]
    return max(hits, key=lambda r: r.workers) if hits else None


def cpu_worker_rate(table: Throughput, device: Device, dataset: str, policy: str) -> Rate:
    """Img/s one CPU worker decodes: measured on the device's machine; else that machine's row
    of another (dataset, policy) times the ratio both show on a machine that measured both;
    ``img_s`` None when the dataset's decoding was never measured."""
    host = _host_rows(table.cpu_decode, device)
    if (r := _widest(host, dataset, policy)) is not None:
        return Rate(r.per_worker, f"measured ({r.host}, {r.dataset}/{r.policy})")
    for base in sorted(host, key=lambda r: (r.dataset != dataset, r.policy != policy, -r.workers)):
        for ref in {x.host for x in table.cpu_decode} - {base.host}:
            others = [x for x in table.cpu_decode if x.host == ref]
            want, like = _widest(others, dataset, policy), _widest(others, base.dataset, base.policy)
            if want and like:
                ratio = want.per_worker / like.per_worker
                return Rate(base.per_worker * ratio,
                            f"scaled from {base.dataset}/{base.policy} measured ({base.host}) x {ratio:.2f} "
                            f"({dataset}/{policy} vs {base.dataset}/{base.policy} on the {ref})")
    return Rate(None, f"{dataset} decoding not measured: no bound")


def feed_rate(table: Throughput, device: Device, cfg: RunConfig, cpus_per_task: int | None
              ) -> tuple[Rate, str, float | None]:
    """The input pipeline's img/s bound per GPU, what bounds it, and the img/s of its own GPU work
    (GPU decoding: the step's GPU time and the decoder's add up; None otherwise). Workers are
    ``cpus_per_task - 1`` for ``num_workers: auto`` (as ``data.workers.resolve_workers`` on CUDA;
    no cpus_per_task: one CPU), and never more than those CPUs (more workers share them)."""
    if cfg.dataset not in DECODED:
        return Rate(None, "in memory"), "none", None
    if cfg.decode == "gpu":
        rows = [r for r in table.gpu_decode if r.device == device.name]
        r = next((r for r in rows if r.dataset == cfg.dataset), rows[0] if rows else None)
        if r is None:
            return Rate(None, f"GPU decode not measured on {device.name}: no bound"), "none", None
        unmeasured = f"; {cfg.auto_augment} on the GPU not measured" if cfg.auto_augment != r.policy else ""
        return (Rate(r.img_s, f"GPU decode measured ({r.dataset}/{r.policy}, loader alone{unmeasured})"),
                "GPU decode", r.decoder_img_s)
    cpus = max((cpus_per_task or 1) - 1, 0)
    workers = min(int(cfg.num_workers), cpus) if cfg.num_workers != "auto" else cpus
    per = cpu_worker_rate(table, device, cfg.dataset, cfg.auto_augment)
    if per.img_s is None:
        return per, "none", None
    what = f"{workers} CPU worker{'s' if workers != 1 else ''}" if workers else "decoding in the training process"
    return Rate(per.img_s * max(workers, 1), f"{per.img_s:.0f} img/s per worker, {per.source}"), what, None


def group_cost(cfg: RunConfig, runs: int, executor: Any, table: Throughput, device: Device,
               flops: Callable[[str, int], float] = flops_per_image) -> GroupCost:
    """The cost of ``runs`` runs of ``cfg`` under ``executor`` (a ``grid.spec.ExecutorSpec``: its
    ranks, nodes x tasks_per_node, split each global batch; its cpus_per_task feed each rank).
    With GPU decoding the step's rate is the step and the decoder sharing the GPU (their GPU
    times per image add: no overlap of the two on the device is assumed)."""
    model, px = model_key(cfg)
    ranks = max(executor.nodes * executor.tasks_per_node, 1)
    batch = cfg.batch_size // (ranks * max(cfg.accum_steps, 1))
    images = float(images_seen(cfg) * runs)
    step = step_rate(table, device, model, px, batch, resolve_compile(cfg.compile, "cuda"), flops)  # a GPU is costed
    feed, bound, decoder = feed_rate(table, device, cfg, executor.cpus_per_task)
    if decoder:
        step = Rate(1 / (1 / step.img_s + 1 / decoder),
                    f"{step.source}, + the GPU decoder's own GPU time ({decoder:,.0f} img/s alone, measured)")
    return GroupCost(runs, images, 3 * 2 * flops(model, px) * images, step, feed, bound)


def study_cost(name: str, groups: list[tuple[RunConfig, int]], executor: Any, table: Throughput,
               device: Device, flops: Callable[[str, int], float] = flops_per_image) -> StudyCost:
    """The cost of one study.

    Args:
        name: the study's name (a sweep's).
        groups: ``(config, runs)`` pairs, ``plan.config_groups`` over ``plan.COST_FIELDS`` and
            :data:`RATE_FIELDS`.
        executor: the spec's ``ExecutorSpec``.
        table: the measured throughput (``models.throughput.load()``).
        device: the GPU the runs are costed on (``table.device("h200")``).
        flops: MACs per image of (preset, image size); tests pass their own.

    Returns:
        The study's :class:`StudyCost`: one :class:`GroupCost` per group.
    """
    return StudyCost(name, device, tuple(group_cost(c, n, executor, table, device, flops) for c, n in groups))


def feed_warning(executor: Any, groups: list[tuple[RunConfig, int]], study: StudyCost) -> str | None:
    """A warning when a GPU job's CPU data workers cannot keep up with its step (the rates of
    ``study``, costed from ``groups`` under ``executor``), or name more workers than it has CPUs;
    else None."""
    if not (executor.gpus_per_node or executor.gpus_per_task):
        return None
    have = max((executor.cpus_per_task or 1) - 1, 0)
    cpu = [(c, g) for (c, _), g in zip(groups, study.groups, strict=True)
           if c.dataset in DECODED and c.decode == "cpu" and c.device != "cpu"]
    explicit = [c.num_workers for c, _ in cpu if c.num_workers != "auto"]
    shared = (f"warning: num_workers {max(explicit)} > cpus_per_task - 1 = {have}: the data workers will share "
              f"CPUs, decoding as {have} (set num_workers: auto or raise cpus_per_task)"
              if explicit and max(explicit) > have else None)
    starved = [(c, g) for c, g in cpu if g.feed.img_s is not None and g.feed.img_s < g.step.img_s]
    if not starved:
        return shared
    c, g = max(starved, key=lambda cg: cg[1].step.img_s / cg[1].feed.img_s)
    workers = have if c.num_workers == "auto" else min(int(c.num_workers), have)
    per = g.feed.img_s / max(workers, 1)
    given = (f"cpus_per_task {executor.cpus_per_task} gives each GPU {workers} data workers" if c.num_workers == "auto"
             else f"num_workers {c.num_workers} gives each GPU {workers} data workers")
    starving = (f"warning: {given}: ~{g.feed.img_s:,.0f} img/s of CPU JPEG decoding ({per:.0f} img/s per worker, "
                f"from models/throughput.json) against {model_key(c)[0]}'s step of ~{g.step.img_s:,.0f} img/s on "
                f"{study.device.name}: the GPU will wait for data; it needs ~{math.ceil(g.step.img_s / per)} workers "
                f"(raise cpus_per_task{' and num_workers' if c.num_workers != 'auto' else ''}, or try decode: gpu)")
    return "\n".join(w for w in (shared, starving) if w)


def no_gpu_note(executors: list[Any], device: Device) -> str | None:
    """A note when no executor asks for a GPU (a local or CPU spec): its cost is what the runs
    would take on ``device``, not what they take where the spec runs them."""
    if any(e.gpus_per_node or e.gpus_per_task for e in executors):
        return None
    return (f"note: the executor asks for no GPU: the GPU-hours are what these runs would take on one "
            f"{device.name} each, not their time on this spec's CPUs")
