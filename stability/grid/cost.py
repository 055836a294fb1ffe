"""The cost planner: GPU-hours of planned runs from MEASURED img/s (``models/throughput.json``).

A group of runs that agree on the cost fields takes training images / img/s plus evaluation
images / their img/s GPU-seconds. Training img/s is the lower of the training step alone
(measured for the device, model, image size, per-GPU batch and compile) and the input pipeline's
bound (CPU workers x a measured per-worker rate, the measured GPU-decode rate, or none for
in-memory data). Evaluation (the validation split before training and after every epoch, for the
model and its EMA) always decodes on the CPU, with no policy; its forward pass is taken at
:data:`EVAL_SPEEDUP` x the training step's img/s, an estimate. Taking the lower rate assumes loader
and step overlap perfectly: the figure is a floor, and where ``throughput.json`` holds a measured
end-to-end rate (``end_to_end``) the study says how far below the model it ran.
Whatever the table lacks is filled in one stated way, and every figure says which it used:
``measured``, ``scaled from <row> measured`` (by FLOPs per image; same device and compile), or
``flops-estimate`` (FLOPs at :data:`MFU` of the device's peak). Torch-free when the models are in
``models/complexity.json`` and no local ``imagefolder`` is counted (that walk is ``stability pack``'s,
which takes torchvision's list of image extensions).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import RunConfig, resolve_compile
from ..data.packed import PackError, image_files, read_meta
from ..data.workers import DECODED, IMAGE_FILES, job_cpus
from ..errors import ConfigError
from ..models.presets import canonical_name, resolve
from ..models.throughput import TABLE, DecodeRate, Device, StepRate, Throughput
from .kinds import resolve_kind

MFU = 0.10  # the FLOPs fallback: about what an eager 4GF ViT reached on the H200 (10-14%, RESULTS.md)
# Evaluation's forward pass vs a training step (forward + backward + optimizer), img/s. Not
# measured: the backward pass is ~2x the forward's FLOPs, so forward alone is ~3x the step's rate.
EVAL_SPEEDUP = 3.0
# Config fields besides plan.COST_FIELDS that decide a run's img/s or its evaluation images.
RATE_FIELDS = ("compile", "accum_steps", "decode", "num_workers", "auto_augment", "device", "data_root",
               "ema_period", "test_split")
# Validation images per dataset (synthetic: a fifth of synthetic_size, at least 10; datasets.py).
VAL_SIZES = {"digits": 300, "synthetic_motifs": 1000, "cifar10": 10000, "cifar100": 10000,
             "imagefolder": 50000, "packed": 50000}
IMAGENET = "ImageNet-1k size assumed"


@dataclass(frozen=True)
class Rate:
    """An img/s and where it came from (``img_s`` None: no bound)."""

    img_s: float | None
    source: str


@dataclass(frozen=True)
class Sizes:
    """A run's training and validation image counts, and where they came from."""

    train: int
    val: int
    source: str  # "": the dataset's own size; else "counted in ..." or IMAGENET


@dataclass(frozen=True)
class Cpus:
    """The CPUs each rank of a job has, and why that many."""

    count: int
    why: str  # "cpus_per_task 16", "this machine's 2 CPUs (kind local, no cpus_per_task)"

    @property
    def for_workers(self) -> int:
        """CPUs left for data workers: one runs the training process (``num_workers: auto``)."""
        return max(self.count - 1, 0)


def shared_gpu(step_img_s: float, decoder_img_s: float | None) -> float:
    """The step's img/s when the GPU also decodes (their GPU times per image add: no overlap of the
    two on the device is assumed); the step's own without a decoder."""
    return 1 / (1 / step_img_s + 1 / decoder_img_s) if decoder_img_s else step_img_s


@dataclass(frozen=True)
class EndToEnd:
    """One measured end-to-end rate (loader + step together, ``throughput.json``'s ``end_to_end``)
    beside the same call's step alone and loader alone: how far below the model the pair ran."""

    device: str
    model: str
    image_size: int
    batch: int
    compile: bool
    dataset: str
    policy: str
    decode: str  # "cpu" or "gpu"
    workers: int
    img_s: float  # loader and step together
    step_img_s: float  # the step alone, same call
    loader_img_s: float  # the loader alone, same call
    source: str
    decoder_img_s: float | None = None  # decode: gpu: the decoder's own GPU work alone, same call

    @property
    def modelled(self) -> float:
        """What the planner's model gives for this call's own figures."""
        return min(shared_gpu(self.step_img_s, self.decoder_img_s), self.loader_img_s)

    @property
    def ratio(self) -> float:
        return self.img_s / self.modelled


@dataclass(frozen=True)
class Gap:
    """The measured end-to-end rates of one feed on a device, as ratios to the model's floor."""

    lo: float
    hi: float
    what: str  # the measured configuration, in words


@dataclass(frozen=True)
class GroupCost:
    """The cost of ``runs`` runs of one configuration (seeds and sampled values apart)."""

    runs: int
    images: float  # training images seen by all of them
    flops: float  # training FLOPs (forward + backward)
    step: Rate
    feed: Rate  # the input pipeline's bound
    bound: str  # what bounds the feed: "15 CPU workers", "GPU decode", "none"
    eval_images: float = 0.0  # validation (and test) images all of them evaluate
    eval_step: Rate = Rate(None, "")  # evaluation's forward pass (an estimate)
    eval_feed: Rate = Rate(None, "in memory")  # evaluation's input: CPU decoding, no policy
    eval_bound: str = "none"  # what bounds it: "15 CPU workers"
    sizes: Sizes | None = None
    gap: Gap | None = None  # the measured end-to-end gap of this feed, where one was measured

    @property
    def img_s(self) -> float:
        return min(self.step.img_s, self.feed.img_s or math.inf)

    @property
    def eval_img_s(self) -> float:
        return min(self.eval_step.img_s or math.inf, self.eval_feed.img_s or math.inf)

    @property
    def train_hours(self) -> float:
        return self.images / self.img_s / 3600

    @property
    def eval_hours(self) -> float:
        return self.eval_images / self.eval_img_s / 3600 if self.eval_images else 0.0

    @property
    def gpu_hours(self) -> float:
        return self.train_hours + self.eval_hours

    def hours_at_gap(self, ratio: Callable[[Gap], float]) -> float:
        """GPU-hours with training at the measured end-to-end ``ratio`` of the floor (evaluation as is)."""
        return self.train_hours / (ratio(self.gap) if self.gap else 1.0) + self.eval_hours


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
    def eval_images(self) -> float:
        return sum(g.eval_images for g in self.groups)

    @property
    def flops(self) -> float:
        return sum(g.flops for g in self.groups)

    @property
    def train_hours(self) -> float:
        return sum(g.train_hours for g in self.groups)

    @property
    def eval_hours(self) -> float:
        return sum(g.eval_hours for g in self.groups)

    def headline(self) -> str:
        """The dry run's summary after its run counts: images, FLOPs, GPU-hours (in the table's
        format) and that they are a floor."""
        return (f"{self.images:.3g} training images and {self.eval_images:.3g} evaluation images, {self.flops:.3g} "
                f"training FLOPs (2 per multiply-add) ~ {self.gpu_hours:,.4g} GPU-hours on {self.device.name} "
                "(a floor: measured img/s, benchmarks/RESULTS.md, with loader and step overlapping perfectly; "
                "evaluation's forward pass estimated; sources below)")

    @property
    def gpu_hours(self) -> float:
        return self.train_hours + self.eval_hours

    def _rate(self, rate: Callable[[GroupCost], float | None]) -> float | None:
        bounded = [g for g in self.groups if rate(g) is not None]
        seconds = sum(g.images / rate(g) for g in bounded)
        # No image to weigh by (groups of no runs): no rate, as for no group. A run that would see
        # no image never gets here: images_seen refuses it.
        return sum(g.images for g in bounded) / seconds if seconds else None

    @property
    def step_img_s(self) -> float | None:
        return self._rate(lambda g: g.step.img_s)

    @property
    def feed_img_s(self) -> float | None:
        return self._rate(lambda g: g.feed.img_s)

    @property
    def img_s(self) -> float | None:
        """Training img/s (evaluation apart: its hours are in ``gpu_hours``, its rate in ``source``)."""
        return self._rate(lambda g: g.img_s)

    @property
    def gapped_hours(self) -> tuple[float, float] | None:
        """GPU-hours at the measured end-to-end gaps (the higher and lower ratio), None when no
        group's feed was measured end to end."""
        if not any(g.gap for g in self.groups):
            return None
        return (sum(g.hours_at_gap(lambda x: x.hi) for g in self.groups),
                sum(g.hours_at_gap(lambda x: x.lo) for g in self.groups))

    def _joined(self, part: Callable[[GroupCost], str]) -> str:
        return " / ".join(dict.fromkeys(p for g in self.groups if (p := part(g)))) or "-"

    @property
    def bound(self) -> str:
        return self._joined(lambda g: g.bound)

    @property
    def source(self) -> str:
        """Where the rates came from, then (indented lines) training vs evaluation, the floor and
        its measured gap, and image counts that were assumed or counted."""
        lines = [f"step {self._joined(lambda g: g.step.source)}; input {self._joined(lambda g: g.feed.source)}"]
        if self.eval_images:
            lines.append(f"  training {self.train_hours:,.4g} + evaluation {self.eval_hours:,.4g} GPU-hours; "
                         f"evaluation: {self._eval_text()}")
        lines.append("  " + self._floor_text())
        if (sizes := self._joined(lambda g: g.sizes.source if g.sizes else "")) != "-":
            lines.append(f"  image counts: {sizes}")
        return "\n".join(lines)

    def _eval_text(self) -> str:
        rate = self.eval_images / (self.eval_hours * 3600) if self.eval_hours else math.inf
        feed = self._joined(lambda g: f"{g.eval_bound}, {g.eval_feed.source}" if g.eval_feed.img_s
                            else g.eval_feed.source)
        return (f"{self.eval_images:.3g} images at {rate:,.0f} img/s (input {feed}; forward pass at "
                f"{self._joined(lambda g: g.eval_step.source)})")

    def _floor_text(self) -> str:
        floor = "a floor: loader and step overlapping perfectly"
        if (at := self.gapped_hours) is None:
            return f"{floor} (no end-to-end rate measured for this feed)"
        gaps = self._joined(lambda g: f"{g.gap.what}: x{g.gap.lo:.2f}–{g.gap.hi:.2f}" if g.gap else "")
        return (f"{floor}; measured end to end on {self.device.name} ({gaps} of the modelled rate): "
                f"~{at[0]:,.4g}–{at[1]:,.4g} GPU-hours at those ratios")

    def as_dict(self) -> dict[str, Any]:
        return {"study": self.name, "device": self.device.name, "runs": self.runs, "images": self.images,
                "eval_images": self.eval_images, "train_flops": self.flops, "step_img_s": self.step_img_s,
                "input_img_s": self.feed_img_s, "input_bound": self.bound, "img_s": self.img_s,
                "train_gpu_hours": self.train_hours, "eval_gpu_hours": self.eval_hours,
                "gpu_hours": self.gpu_hours, "gpu_hours_at_measured_gap": self.gapped_hours,
                "source": self.source}


def total_note(costs: list[StudyCost]) -> str:
    """The total of several studies split into training and evaluation, with the measured gap."""
    train, evaluate = sum(c.train_hours for c in costs), sum(c.eval_hours for c in costs)
    at = [c.gapped_hours or (c.gpu_hours, c.gpu_hours) for c in costs]
    gap = (f"; at the measured end-to-end gaps ~{sum(a[0] for a in at):,.4g}–{sum(a[1] for a in at):,.4g}"
           if any(c.gapped_hours for c in costs) else "")
    return (f"total: training {train:,.4g} + evaluation {evaluate:,.4g} = {train + evaluate:,.4g} GPU-hours, "
            f"a floor (loader and step overlapping perfectly){gap}")


@functools.cache
def _count_images(folder: str) -> int:
    """Image files under ``folder`` as training lists them (ImageFolder follows symlinked class
    folders and subfolders; none is opened). The walk is ``stability pack``'s
    (``data.packed.image_files``): it refuses, naming the folder, a symlink loop (which would never
    end) or a folder linked twice, a split without class folders and a class without images, each
    of which training would fail on or read twice.

    Args:
        folder: a split folder, ``<data_root>/train``.

    Returns:
        The number of image files training reads from it.

    Raises:
        ConfigError: on data training cannot read once, naming the folder.
    """
    try:
        return len(image_files(Path(folder))[1])
    except PackError as e:
        raise ConfigError(f"data_root: {e}") from None


def _pack_sizes(root: Path) -> Sizes:
    """The counts in a pack's ``meta.json`` (``data.packed.read_meta``, the one reader training
    uses too); ``ConfigError`` naming the file when it is not one ``stability pack`` wrote in
    full: training on it fails too, so costing it at any size would be wrong."""
    try:
        counts = read_meta(root)["counts"]
    except PackError as e:
        raise ConfigError(f"data_root: {e}") from None
    return Sizes(counts["train"], counts["val"], f"from {root / 'meta.json'}")


def data_sizes(cfg: RunConfig) -> Sizes:
    """Training and validation images of ``cfg``'s data.

    An ``imagefolder`` under a ``data_root`` this machine has is counted as training lists it
    (symlinks followed); a ``packed`` one is read from its ``meta.json``; one this machine lacks is
    taken at ImageNet-1k's size, and says so. CIFAR is taken at its release's size, and says so (its
    files are pickles: unpickling 180 MB only to count is not worth it).

    Args:
        cfg: the run's config.

    Returns:
        The :class:`Sizes`, ``source`` saying where the counts came from ("" for counts that are
        exact without looking: ``digits``, ``synthetic``).

    Raises:
        ConfigError: a local folder training cannot read (a ``meta.json`` that is not a pack's, a
            symlink loop, a class without images), naming it.
    """
    from ..data.datasets import SIZES

    if cfg.dataset in IMAGE_FILES:
        root = Path(cfg.data_root or "")
        assumed = f"{IMAGENET} ({cfg.data_root} not on this machine)"
        if cfg.dataset == "imagefolder" and cfg.data_root and (root / "train").is_dir():
            return Sizes(_count_images(str(root / "train")), _count_images(str(root / "val")),
                         f"counted in {root}/{{train,val}}")
        if cfg.dataset == "packed" and cfg.data_root and (root / "meta.json").exists():
            return _pack_sizes(root)
        if cfg.data_root and root.is_dir():  # here, but not its layout: say so, not "not on this machine"
            lacks = "train folder" if cfg.dataset == "imagefolder" else "meta.json"
            assumed = f"{IMAGENET} ({root} has no {lacks} on this machine)"
        return Sizes(SIZES[cfg.dataset][0], VAL_SIZES[cfg.dataset], assumed)
    if cfg.dataset == "synthetic":
        return Sizes(cfg.synthetic_size, max(cfg.synthetic_size // 5, 10), "")
    train, val = SIZES[cfg.dataset][0], VAL_SIZES[cfg.dataset]
    if cfg.dataset.startswith("cifar"):
        under = f" under {cfg.data_root}" if cfg.data_root else ""
        return Sizes(train, val, f"{cfg.dataset}: its release's {train:,} training and {val:,} validation images, "
                                 f"assumed (the files{under} are not read to count them)")
    return Sizes(train, val, "")


def images_seen(cfg: RunConfig, sizes: Sizes | None = None) -> int:
    """Training images one run of ``cfg`` sees: full global batches (the trainer drops a partial
    last one), ``steps_per_epoch`` capped; the ``test_split`` images held out of training.

    Args:
        cfg: the run's config.
        sizes: its data's sizes (default: :func:`data_sizes`).

    Returns:
        The images one run trains on, at least one batch.

    Raises:
        ConfigError: when the run would see no full batch (``batch_size`` above its training
            images), naming ``batch_size``, the count and where it came from.
    """
    sizes = sizes or data_sizes(cfg)
    n_train = sizes.train - (cfg.test_split or 0)
    per_epoch = n_train // cfg.batch_size
    if per_epoch < 1:  # a run of no step: nothing to cost (and every rate would divide by 0 images)
        where = f"({sizes.source})" if sizes.source else "(synthetic_size)" if cfg.dataset == "synthetic" \
            else f"of {cfg.dataset}"
        images = (f"the {max(n_train, 0):,} training images that test_split {cfg.test_split:,} leaves of the "
                  f"{sizes.train:,} {where}" if cfg.test_split else f"the {sizes.train:,} training images {where}")
        more = ", or a data_root with more images" if cfg.dataset in IMAGE_FILES else ""
        raise ConfigError(f"batch_size {cfg.batch_size:,} exceeds {images}: a run would see no full batch and "
                          f"train on nothing (allowed: batch_size <= {max(n_train, 1):,}{more})")
    return cfg.epochs * min(per_epoch, cfg.steps_per_epoch or per_epoch) * cfg.batch_size


def eval_images(cfg: RunConfig, sizes: Sizes | None = None) -> int:
    """Images one run of ``cfg`` evaluates (``trainer.train``): the validation split once before
    training and after every epoch, for the model and (``ema_period`` > 0) its EMA, whatever
    ``steps_per_epoch``; the held-out test split once each at the end. The EMA's precise-BN pass
    before its last evaluation (at most 8,192 training images, models with BatchNorm) is left out."""
    models = 1 + (cfg.ema_period > 0)
    return (sizes or data_sizes(cfg)).val * (1 + cfg.epochs * models) + (cfg.test_split or 0) * models


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
        how = "scaled from" if scale != 1 else "taken from"  # the same FLOPs: nothing was scaled
        return Rate(r.img_s * scale, f"{how} {r.model} {r.image_size} px batch {r.batch} "
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


def local_cpus() -> int:
    """CPUs a rank on this machine has, as ``num_workers: auto`` counts them (no Slurm variables)."""
    return job_cpus({})


def executor_cpus(executor: Any) -> Cpus:
    """The CPUs each rank of ``executor`` gets: its ``cpus_per_task``; unset, this machine's for
    local jobs (they run here, where ``num_workers: auto`` counts them), else Slurm's default, 1."""
    if executor.cpus_per_task:
        return Cpus(executor.cpus_per_task, f"cpus_per_task {executor.cpus_per_task}")
    kind = resolve_kind(executor.kind)
    if kind in ("local", "debug"):
        n = local_cpus()
        return Cpus(n, f"this machine's {n} CPU{'s' if n != 1 else ''} (kind {kind}, no cpus_per_task)")
    return Cpus(1, "cpus_per_task unset (Slurm's default, 1 CPU)")


def cpu_workers(cfg: RunConfig, cpus: Cpus) -> int:
    """Workers that decode in parallel: ``cpus - 1`` for ``num_workers: auto`` (as
    ``data.workers.resolve_workers`` on CUDA), and never more than those CPUs (more share them)."""
    have = cpus.for_workers
    return have if cfg.num_workers == "auto" else min(int(cfg.num_workers), have)


def cpu_feed(table: Throughput, device: Device, cfg: RunConfig, cpus: Cpus, policy: str) -> tuple[Rate, str]:
    """The img/s ``cfg``'s CPU workers decode with ``policy``, and what bounds it ("15 CPU workers")."""
    workers = cpu_workers(cfg, cpus)
    per = cpu_worker_rate(table, device, cfg.dataset, policy)
    if per.img_s is None:
        return per, "none"
    what = f"{workers} CPU worker{'s' if workers != 1 else ''}" if workers else "decoding in the training process"
    return Rate(per.img_s * max(workers, 1), f"{per.img_s:.0f} img/s per worker, {per.source}"), what


def feed_rate(table: Throughput, device: Device, cfg: RunConfig, cpus: Cpus,
              measured: tuple[EndToEnd, ...] = ()) -> tuple[Rate, str, float | None]:
    """The input pipeline's img/s bound per GPU, what bounds it, and the img/s of its own GPU work
    (GPU decoding: the step's GPU time and the decoder's add up; None otherwise). ``measured``:
    end-to-end rows, whose GPU-decode calls say how many CPU workers read the bytes there."""
    if cfg.dataset not in DECODED:
        return Rate(None, "in memory"), "none", None
    if cfg.decode == "gpu":
        rows = [r for r in table.gpu_decode if r.device == device.name]
        r = next((r for r in rows if r.dataset == cfg.dataset), rows[0] if rows else None)
        if r is None:
            return Rate(None, f"GPU decode not measured on {device.name}: no bound"), "none", None
        unmeasured = f"; {cfg.auto_augment} on the GPU not measured" if cfg.auto_augment != r.policy else ""
        readers = [e.workers for e in measured if e.device == device.name and e.decode == "gpu"]
        if readers and (have := cpu_workers(cfg, cpus)) < min(readers):  # bytes read by fewer workers
            unmeasured += (f"; measured with {min(readers)} CPU workers reading the bytes, this spec gives {have}: "
                           "not measured there")
        return (Rate(r.img_s, f"GPU decode measured ({r.dataset}/{r.policy}, loader alone{unmeasured})"),
                "GPU decode", r.decoder_img_s)
    return (*cpu_feed(table, device, cfg, cpus, cfg.auto_augment), None)


@functools.cache
def end_to_end(path: Path = TABLE) -> tuple[EndToEnd, ...]:
    """The measured end-to-end rows of the table at ``path`` (the shipped one by default)."""
    return tuple(EndToEnd(**r) for r in json.loads(path.read_text()).get("end_to_end", ()))


def measured_gap(rows: tuple[EndToEnd, ...], device: Device, cfg: RunConfig) -> Gap | None:
    """How far below the model's floor loader and step ran together, measured on ``device`` with
    ``cfg``'s kind of feed (CPU or GPU decoding); None for in-memory data or an unmeasured feed."""
    if cfg.dataset not in DECODED:
        return None
    hits = [r for r in rows if r.device == device.name and r.decode == cfg.decode]
    if not hits:
        return None
    ratios = [r.ratio for r in hits]
    r = hits[0]
    feed = f"{r.workers} CPU workers" if r.decode == "cpu" else "GPU decode"
    what = (f"{' and '.join(dict.fromkeys(h.model for h in hits))} {'compiled' if r.compile else 'eager'}, "
            f"batch {r.batch}, {r.dataset}/{r.policy}, {feed}")
    return Gap(min(ratios), max(ratios), what)


def group_cost(cfg: RunConfig, runs: int, executor: Any, table: Throughput, device: Device,
               flops: Callable[[str, int], float] = flops_per_image, measured: tuple[EndToEnd, ...] | None = None
               ) -> GroupCost:
    """The cost of ``runs`` runs of ``cfg`` under ``executor`` (a ``grid.spec.ExecutorSpec``: its
    ranks, nodes x tasks_per_node, split each global batch; its CPUs, :func:`executor_cpus`, feed
    each rank). With GPU decoding the step's rate is the step and the decoder sharing the GPU
    (their GPU times per image add: no overlap of the two on the device is assumed). Evaluation
    decodes on the CPU with no policy; its forward pass runs at :data:`EVAL_SPEEDUP` x the step
    (an estimate). ``measured``: end-to-end rows (default: the shipped table's)."""
    model, px = model_key(cfg)
    ranks = max(executor.nodes * executor.tasks_per_node, 1)
    batch = cfg.batch_size // (ranks * max(cfg.accum_steps, 1))
    sizes = data_sizes(cfg)
    images = float(images_seen(cfg, sizes) * runs)
    step = step_rate(table, device, model, px, batch, resolve_compile(cfg.compile, "cuda"), flops)  # a GPU is costed
    cpus = executor_cpus(executor)
    rows = end_to_end() if measured is None else measured
    feed, bound, decoder = feed_rate(table, device, cfg, cpus, rows)
    eval_step = Rate(step.img_s * EVAL_SPEEDUP, f"~{EVAL_SPEEDUP:g}x the training step's img/s: an estimate")
    eval_feed, eval_bound = (cpu_feed(table, device, cfg, cpus, "none") if cfg.dataset in DECODED
                             else (Rate(None, "in memory"), "none"))  # validation decodes on the CPU, no policy
    if decoder:
        step = Rate(shared_gpu(step.img_s, decoder),
                    f"{step.source}, + the GPU decoder's own GPU time ({decoder:,.0f} img/s alone, measured)")
    gap = measured_gap(rows, device, cfg)
    return GroupCost(runs, images, 3 * 2 * flops(model, px) * images, step, feed, bound,
                     float(eval_images(cfg, sizes) * runs), eval_step, eval_feed, eval_bound, sizes, gap)


def study_cost(name: str, groups: list[tuple[RunConfig, int]], executor: Any, table: Throughput,
               device: Device, flops: Callable[[str, int], float] = flops_per_image,
               measured: tuple[EndToEnd, ...] | None = None) -> StudyCost:
    """The cost of one study.

    Args:
        name: the study's name (a sweep's).
        groups: ``(config, runs)`` pairs, ``plan.config_groups`` over ``plan.COST_FIELDS`` and
            :data:`RATE_FIELDS`.
        executor: the spec's ``ExecutorSpec``.
        table: the measured throughput (``models.throughput.load()``).
        device: the GPU the runs are costed on (``table.device("h200")``).
        flops: MACs per image of (preset, image size); tests pass their own.
        measured: the end-to-end rows (default: :func:`end_to_end` of the shipped table).

    Returns:
        The study's :class:`StudyCost`: one :class:`GroupCost` per group.
    """
    return StudyCost(name, device, tuple(group_cost(c, n, executor, table, device, flops, measured)
                                         for c, n in groups))


def feed_warning(executor: Any, groups: list[tuple[RunConfig, int]], study: StudyCost) -> str | None:
    """A warning when a GPU job's CPU data workers cannot keep up with its step (the rates of
    ``study``, costed from ``groups`` under ``executor``), or name more workers than it has CPUs;
    else None."""
    if not (executor.gpus_per_node or executor.gpus_per_task):
        return None
    cpus = executor_cpus(executor)
    have = cpus.for_workers
    cpu = [(c, g) for (c, _), g in zip(groups, study.groups, strict=True)
           if c.dataset in DECODED and c.decode == "cpu" and c.device != "cpu"]
    explicit = [c.num_workers for c, _ in cpu if c.num_workers != "auto"]
    have_text = "cpus_per_task" if executor.cpus_per_task else cpus.why
    shared = (f"warning: num_workers {max(explicit)} > {have_text} - 1 = {have}: the data workers will share "
              f"CPUs, decoding as {have} (set num_workers: auto or raise cpus_per_task)"
              if explicit and max(explicit) > have else None)
    starved = [(c, g) for c, g in cpu if g.feed.img_s is not None and g.feed.img_s < g.step.img_s]
    if not starved:
        return shared
    c, g = max(starved, key=lambda cg: cg[1].step.img_s / cg[1].feed.img_s)
    workers = cpu_workers(c, cpus)
    per = g.feed.img_s / max(workers, 1)
    plural = "s" if workers != 1 else ""
    given = (f"{cpus.why} gives each GPU {workers} data worker{plural}" if c.num_workers == "auto"
             else f"num_workers {c.num_workers} gives each GPU {workers} data worker{plural}")
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
