"""``RunConfig``: the typed description of one training run, and its validation."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import typing
from dataclasses import dataclass
from typing import Any

from .data.datasets import DATASETS, DECODED, HOLD_OUT_ONLY, IMAGE_FILES, SIZES
from .errors import ConfigError, shown
from .models.presets import STEMS, VIT_SIZES, architecture_revision, resolve
from .pruner import canonical as pruner_canonical
from .validate import checked_fields

OPTIMIZERS = ("adamw", "sgd")
SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a folder name: no '/', '..', '=' or spaces
AUGMENTS = ("none", "shift", "affine")  # what each does: stability/data/augment.py
DEVICES = ("auto", "cpu", "cuda")
BAD_CHECKPOINT = ("restart", "fail")  # what a run does with a checkpoint it cannot read (trainer/checkpoint.py)
AUTO_AUGMENTS = ("none", "autoaugment", "randaugment")  # torchvision's per-image policies (data/datasets.py)
DECODES = ("cpu", "gpu")  # where imagefolder/packed JPEGs are decoded (data/pipeline.py)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile's; reduce-overhead: CUDA graphs
OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "loop")  # auto: fused on CUDA, foreach elsewhere (trainer/optim.py)


@dataclass(frozen=True)
class RunConfig:
    """One run. ``lr`` is used as given (the paper's lrs are for batch 2048: scale linearly)."""

    model: str = "vit_tiny"  # a preset of `stability models`: vit_{tiny,small,1gf,4gf,18gf,36gf}, regnety_*, or an alias (vit_c_4gf)
    stem: str | None = None  # patchify | conv; None = the alias' stem, or patchify
    dataset: str = "digits"  # digits | synthetic | synthetic_motifs | cifar10 | cifar100 | imagefolder | packed
    data_root: str | None = None  # the folder of cifar*/imagefolder/packed data (not in the id: data may move)
    download: bool = False  # cifar*: fetch it into data_root when missing (the only network access)
    image_size: int | None = None  # None = the dataset's native size; a ViT's: a multiple of its patch size
    synthetic_size: int = 1024  # synthetic*: training images generated
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 1e-3  # peak, after linear warmup; half-cosine to 0 per step
    wd: float = 0.05  # decoupled (AdamW) or L2 (SGD); none on norm gains and biases
    momentum: float = 0.9  # sgd
    nesterov: bool = True  # sgd (as pycls)
    betas: tuple[float, float] = (0.9, 0.999)  # adamw
    epochs: int = 10  # training length (the cosine schedule spans it)
    steps_per_epoch: int | None = None  # cap batches per epoch (smoke tests); None = full epoch
    batch_size: int = 64  # global: split over ranks and accum_steps
    warmup_epochs: float = 1.0  # linear warmup from 0 (fractions of an epoch allowed)
    label_smoothing: float = 0.1  # the paper recipe's, on by default; 0 = off
    augment: str = "none"  # none | shift | affine: random moves off the patch grid (data/augment.py)
    # The paper's recipe (recipe.py): a per-image policy in the dataset transform (decoded image
    # datasets only), then MixUp/CutMix per batch with soft targets (data/mix.py). Defaults: off.
    auto_augment: str = "none"  # none | autoaugment (ImageNet policy) | randaugment
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixing weight; 0 = off
    cutmix_alpha: float = 0.0  # Beta(alpha, alpha) box area; 0 = off
    mix_prob: float = 1.0  # probability that a batch is mixed at all (when either alpha > 0)
    mix_switch_prob: float = 0.5  # probability of CutMix rather than MixUp when both are on
    # Weight EMA as pycls (OPTIM.EMA_ALPHA, EMA_UPDATE_PERIOD): every ``ema_period`` batches of an
    # epoch, ema += alpha * (w - ema) with alpha = min(1, ema_alpha * batch_size / epochs *
    # ema_period); a plain copy during warmup. Over a run that is ema_alpha x (training images)
    # time constants (12.8 on ImageNet with pycls' 1e-5). ema_period 0 turns it off.
    ema_alpha: float = 1e-5  # pycls' EMA_ALPHA: each update's weight is min(1, this x batch_size / epochs x ema_period)
    ema_period: int = 32  # pycls' EMA_UPDATE_PERIOD, in batches; 0 = no EMA
    grad_clip: float | None = None  # the paper uses none
    decay_embeddings: bool = True  # the paper/pycls decay cls token + pos embedding; timm doesn't
    freeze_stem: bool = False  # MoCo v3: keep the stem at its random init
    # Fixes for attention/output-logit growth (Wortsman et al. 2023, arXiv 2309.14322): a
    # LayerNorm on each head's queries and keys, and the z-loss coef * log^2 Z on the output
    # logits (1e-4 in Wortsman); Adam's epsilon (§3.4: too large an eps shrinks small updates).
    qk_norm: bool = False  # a LayerNorm on each head's queries and keys
    z_loss: float = 0.0  # coef of log^2 Z on the output logits (Wortsman: 1e-4); 0 = off
    adam_eps: float = 1e-8  # AdamW's epsilon (torch's default)
    # Images held out of the training set as a test split (a fixed seeded subset, disjoint from
    # val, the same for every run of the dataset): configurations are chosen on val and reported
    # on test (docs/methodology.md, "Verdicts"). Tensor datasets only (digits, synthetic*); 0 = none.
    test_split: int = 0
    seed: int = 0  # init, data order, augmentation draws: a replicate is another seed
    trace_every: int = 10  # per-layer grad norms every k steps (also the log/flush interval)
    trace_attention: bool = True  # max attention logit and entropy per layer on trace steps (one extra QKᵀ)
    divergence_factor: float = 10.0  # diverged when loss > factor * ln(num_classes)
    # Stop doomed runs early (pruner.py): a preset name, "name:key=value,...", or in YAML a mapping
    # {preset: default, after: 0.3}; None = off. A pruned run is recorded as ``pruned``, checkpointed.
    pruner: str | None = None
    accum_steps: int = 1  # micro-batches per step: batch_size = world_size x accum_steps x micro
    # How the step executes (benchmarks/RESULTS.md): torch.compile pays x1.6-2.1 for a 4GF ViT on
    # an H200 but only after minutes on a CPU, so auto = on for CUDA, off on CPU; the optimizer's
    # update as one fused kernel, a foreach (multi-tensor) one, or a Python loop per parameter.
    # None changes the maths beyond float rounding: not in the run id, recorded on the runs row.
    compile: bool | str = "auto"  # auto | true | false
    compile_mode: str = "default"  # default | reduce-overhead | max-autotune (torch.compile's mode)
    optimizer_impl: str = "auto"  # auto | fused | foreach | loop
    # An unreadable checkpoint: restart = move it to quarantine and start afresh with a warning;
    # fail = fail the run naming the file (for a post-mortem before anything is redone).
    bad_checkpoint: str = "restart"
    num_workers: int | str = "auto"  # loader processes per rank; auto = the job's CPUs - 1 on CUDA, 0 on CPU
    prefetch_factor: int = 2  # batches each worker keeps ready
    decode: str = "cpu"  # cpu | gpu: JPEGs decoded by the workers or on the GPU (imagefolder, packed)
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    results: str = "results"  # the results root the run's rows and checkpoint go under
    sweep: str = "default"  # the sweep the run belongs to (a folder name; a grid sets it)

    # Fields added after run ids were first issued: left out of the id while at their default,
    # so every run planned before they existed keeps its id (and its results).
    LATER_FIELDS: typing.ClassVar[frozenset[str]] = frozenset(
        {"ema_alpha", "ema_period", "augment", "auto_augment", "mixup_alpha", "cutmix_alpha", "mix_prob",
         "mix_switch_prob", "qk_norm", "z_loss", "adam_eps", "test_split", "pruner"})
    # Fields that say where or how a run executes, not what it computes: not in the run id.
    EXECUTION_FIELDS: typing.ClassVar[frozenset[str]] = frozenset(
        {"results", "sweep", "device", "num_workers", "prefetch_factor", "decode", "data_root", "download",
         "accum_steps", "compile", "compile_mode", "optimizer_impl", "bad_checkpoint", "trace_attention"}
    )

    @functools.cached_property
    def run_id(self) -> str:
        """Short hash of the canonical config (execution fields excluded)."""
        return config_hash(self.identity())

    def identity(self) -> dict[str, Any]:
        """What the run computes: the fields that make its id, with the model alias resolved."""
        d = {k: v for k, v in self.to_dict().items() if k not in self.EXECUTION_FIELDS
             and not (k in self.LATER_FIELDS and v == FIELDS[k].default)}
        if not (self.mixup_alpha or self.cutmix_alpha):  # mixing off: its probabilities compute nothing
            d.pop("mix_prob", None), d.pop("mix_switch_prob", None)
        d["model"], d["stem"] = resolve(self.model, self.stem)  # vit_c_4gf == vit_4gf + conv
        if rev := architecture_revision(d["model"], d["stem"]):
            d["arch_rev"] = rev
        return d

    def to_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in FIELD_NAMES}  # flat values: no deep copy
        d["betas"] = list(self.betas)
        return d


HASH_SEPARATORS = (",", ":")


def config_hash(d: dict[str, Any], length: int = 12) -> str:
    return canonical_hash(json.dumps(d, sort_keys=True, separators=HASH_SEPARATORS, default=str), length)


def canonical_hash(canonical: str, length: int = 12) -> str:
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def config_json(cfg: RunConfig) -> str:
    """The config as stored in a sweep's plan (sorted keys, every field)."""
    return json.dumps(cfg.to_dict(), sort_keys=True)


def config_from_json(text: str) -> RunConfig:
    """A config written by :func:`config_json`. It was validated when planned, so it is rebuilt
    without re-validation (fast for big plans); one from an older version with unknown fields is
    validated and fails with a clear error."""
    d = json.loads(text)
    if set(d) <= set(FIELDS):
        return RunConfig(**{**d, "betas": tuple(d["betas"])})
    return run_config(d)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(RunConfig)}
FIELD_NAMES = tuple(FIELDS)


def _check(name: str, ok: bool, allowed: str, value: Any, source: str | None) -> None:
    if not ok:
        raise ConfigError(f"{name}: {shown(value)} is not allowed ({allowed})", source)


def resolve_compile(setting: bool | str, device_type: str) -> bool:
    """``compile`` on ``device_type``: ``auto`` is on for CUDA (a 4GF ViT steps x1.6-2.1 faster on
    an H200), off elsewhere (on a CPU the first compile takes 23-64 s and then gains 6-19%: a loss
    for short runs). RESULTS.md. The trainer and the cost planner both resolve it here."""
    if setting == "auto":
        return device_type == "cuda"
    return bool(setting)


def _check_whole_patches(cfg: RunConfig, source: str | None) -> None:
    """``ConfigError`` when a ViT's ``image_size`` is not a multiple of its patch size: the
    patchify stem would drop the border that does not fill a patch (vit_tiny at 30 px: 7x7 tokens
    of 28 px) while the conv stem pads and sees it all (8x8), so a stem comparison would compare
    two inputs. The datasets' native sizes (32, 224) are multiples of every patch size."""
    size = VIT_SIZES.get(resolve(cfg.model, cfg.stem)[0])
    if size is None or cfg.image_size is None or cfg.image_size % size.patch_size == 0:
        return
    p = size.patch_size
    lower = cfg.image_size // p * p
    near = " or ".join(str(n) for n in (lower, lower + p) if n >= max(p, 8))
    _check("image_size", False, f"{cfg.model} has patch size {p}: image_size must be a multiple of it, so that "
           f"both stems see the whole image; nearest: {near}", cfg.image_size, source)


def run_config(d: dict[str, Any], source: str | None = None) -> RunConfig:
    """Validate a mapping into a ``RunConfig``; raises ``ConfigError`` naming source and field."""
    if d.get("pruner") is not None:  # one text per pruner, so the same settings give one run id
        d = {**d, "pruner": pruner_canonical(d["pruner"], source)}
    values = checked_fields(RunConfig, d, source)
    cfg = RunConfig(**values)
    try:
        resolve(cfg.model, cfg.stem)
    except ValueError as e:
        raise ConfigError(str(e), source) from None
    _check("stem", cfg.stem is None or cfg.stem in STEMS, f"allowed: {', '.join(STEMS)}", cfg.stem, source)
    _check("dataset", cfg.dataset in DATASETS, f"allowed: {', '.join(DATASETS)}", cfg.dataset, source)
    _check("augment", cfg.augment in AUGMENTS, f"allowed: {', '.join(AUGMENTS)}", cfg.augment, source)
    _check("optimizer", cfg.optimizer in OPTIMIZERS, f"allowed: {', '.join(OPTIMIZERS)}", cfg.optimizer, source)
    _check("device", cfg.device in DEVICES or cfg.device.startswith("cuda:"),
           f"allowed: {', '.join(DEVICES)}, cuda:N", cfg.device, source)
    _check("lr", cfg.lr > 0, "must be > 0", cfg.lr, source)
    _check("wd", cfg.wd >= 0, "must be >= 0", cfg.wd, source)
    _check("epochs", cfg.epochs >= 1, "must be >= 1", cfg.epochs, source)
    _check("batch_size", cfg.batch_size >= 1, "must be >= 1", cfg.batch_size, source)
    _check("steps_per_epoch", cfg.steps_per_epoch is None or cfg.steps_per_epoch >= 1,
           "must be >= 1 or null", cfg.steps_per_epoch, source)
    _check("warmup_epochs", 0 <= cfg.warmup_epochs <= cfg.epochs, "must be in [0, epochs]",
           cfg.warmup_epochs, source)
    _check("ema_alpha", 0 <= cfg.ema_alpha <= 1, "must be in [0, 1]", cfg.ema_alpha, source)
    _check("ema_period", cfg.ema_period >= 0, "must be >= 0 (0 = no EMA)", cfg.ema_period, source)
    _check("label_smoothing", 0 <= cfg.label_smoothing < 1, "must be in [0, 1)", cfg.label_smoothing, source)
    _check("momentum", 0 <= cfg.momentum < 1, "must be in [0, 1)", cfg.momentum, source)
    _check("betas", all(0 <= b < 1 for b in cfg.betas), "each must be in [0, 1)", list(cfg.betas), source)
    _check("z_loss", cfg.z_loss >= 0, "must be >= 0 (0 = off; Wortsman et al. use 1e-4)", cfg.z_loss, source)
    _check("adam_eps", cfg.adam_eps > 0, "must be > 0", cfg.adam_eps, source)
    _check("grad_clip", cfg.grad_clip is None or cfg.grad_clip > 0, "must be > 0 or null", cfg.grad_clip, source)
    _check("trace_every", cfg.trace_every >= 1, "must be >= 1", cfg.trace_every, source)
    _check("divergence_factor", cfg.divergence_factor > 1, "must be > 1", cfg.divergence_factor, source)
    _check("accum_steps", cfg.accum_steps >= 1 and cfg.batch_size % cfg.accum_steps == 0,
           "must be >= 1 and divide batch_size", cfg.accum_steps, source)
    _check("num_workers", cfg.num_workers == "auto" or isinstance(cfg.num_workers, int) and cfg.num_workers >= 0,
           "an integer >= 0 or auto", cfg.num_workers, source)
    _check("prefetch_factor", cfg.prefetch_factor >= 1, "must be >= 1", cfg.prefetch_factor, source)
    _check("compile", isinstance(cfg.compile, bool) or cfg.compile == "auto", "allowed: auto, true, false",
           cfg.compile, source)
    _check("compile_mode", cfg.compile_mode in COMPILE_MODES, f"allowed: {', '.join(COMPILE_MODES)}",
           cfg.compile_mode, source)
    _check("optimizer_impl", cfg.optimizer_impl in OPTIMIZER_IMPLS, f"allowed: {', '.join(OPTIMIZER_IMPLS)}",
           cfg.optimizer_impl, source)
    _check("bad_checkpoint", cfg.bad_checkpoint in BAD_CHECKPOINT, f"allowed: {', '.join(BAD_CHECKPOINT)}",
           cfg.bad_checkpoint, source)
    _check("decode", cfg.decode in DECODES, f"allowed: {', '.join(DECODES)}", cfg.decode, source)
    _check("decode", cfg.decode == "cpu" or cfg.dataset in IMAGE_FILES,
           "gpu needs dataset imagefolder or packed (JPEG files)", cfg.decode, source)
    _check("decode", cfg.decode == "cpu" or cfg.device != "cpu", "gpu needs a CUDA device, not device=cpu",
           cfg.decode, source)
    _check("auto_augment", cfg.auto_augment in AUTO_AUGMENTS, f"allowed: {', '.join(AUTO_AUGMENTS)}",
           cfg.auto_augment, source)
    _check("auto_augment", cfg.auto_augment == "none" or cfg.dataset in DECODED,
           f"a policy needs decoded images (dataset {', '.join(DECODED)}); in-memory datasets take augment",
           cfg.auto_augment, source)
    for name in ("mixup_alpha", "cutmix_alpha"):
        _check(name, 0 <= getattr(cfg, name) <= 100, "must be in [0, 100] (0 = off)", getattr(cfg, name), source)
    for name in ("mix_prob", "mix_switch_prob"):
        _check(name, 0 <= getattr(cfg, name) <= 1, "must be in [0, 1]", getattr(cfg, name), source)
    _check("test_split", cfg.test_split >= 0, "must be >= 0 (0 = no test split)", cfg.test_split, source)
    known = SIZES.get(cfg.dataset, (None,))[0] if cfg.dataset != "synthetic" else cfg.synthetic_size
    _check("test_split", cfg.test_split == 0 or known is None or cfg.test_split < known,
           f"must be below the dataset's {known} training images", cfg.test_split, source)
    _check("test_split", cfg.test_split == 0 or cfg.dataset not in DECODED, HOLD_OUT_ONLY, cfg.test_split, source)
    _check("synthetic_size", cfg.synthetic_size >= 1, "must be >= 1", cfg.synthetic_size, source)
    _check("image_size", cfg.image_size is None or cfg.image_size >= 8, "must be >= 8 or null", cfg.image_size, source)
    _check_whole_patches(cfg, source)
    _check("sweep", SWEEP_NAME.fullmatch(cfg.sweep) is not None,
           "a name of letters, digits, '_', '.', '-' starting with a letter or digit", cfg.sweep, source)
    return cfg

