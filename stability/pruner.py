"""Stop doomed runs early: one decision function over a run's recorded signals.

A run is *doomed* when it would end diverged (a non-finite loss, or one above the divergence
bound) or at chance (its loss stuck near ln C). :func:`decide` looks at what the trainer records,
step by step, and says whether to stop now, with the rule and the signal values that fired:

- ``nonfinite``: a NaN or inf loss, or one above the divergence bound. The strongest evidence there
  is, never "no data"; it fires at once, whatever ``after`` says.
- ``above``: the mean loss over the last ``window`` of training is at least ``above`` x ln C: worse
  than a uniform guess (whose loss is ln C, label smoothing or not), the loss of a run thrown off
  by too large a step. It may fire once ``above_after`` of the run's steps have passed.
- ``chance``: the window's mean loss is at least ``chance`` x ln C and fell by less than ``stall``
  x ln C since the window before: stuck at chance, not learning.
- ``rise``: the window's mean loss is ``rise`` x ln C above the lowest window mean the run had
  reached: it learned, then fell back (the collapse of a too-large lr).
- ``attn_logit``, ``grad_jump``, ``log_z``, ``update_ratio`` (off unless set): the largest attention
  logit, the total gradient norm over its running median, |mean log Z|, the largest per-layer
  update/parameter ratio, each against a bound.

``chance`` and ``rise`` wait until ``after`` of the run's steps have passed (a good run can sit at
ln C for half of a short schedule before it learns), the signal rules until ``signal_after``. The same
function runs in three places: the trainer (``pruner:`` in a run config; checked at every flush,
i.e. every ``trace_every`` steps), an Optuna ``BasePruner`` (:func:`optuna_pruner`) and
``stability replay`` (recorded sweeps, no training). The thresholds of the shipped presets were
chosen by replay on the tuning sweeps and scored on held-out ones (docs/methodology.md, "Pruning").
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ConfigError, shown

OFF = ("none", "off", "false", "null", "")  # texts that turn the pruner off
RULES = ("nonfinite", "above", "chance", "rise", "attn_logit", "grad_jump", "log_z", "update_ratio")


@dataclass(frozen=True)
class PrunerSettings:
    """One pruner's rules and thresholds (None turns a rule off).

    Args:
        window: fraction of the run's steps each mean loss is taken over (at least one step).
        above: ``above`` rule: the window's mean loss is at least this x ln C.
        above_after: fraction of the run's steps before ``above`` may fire.
        after: fraction of the run's steps before ``chance`` and ``rise`` may fire.
        chance: ``chance`` rule: the window's mean loss is at least this x ln C ...
        stall: ... and fell by less than this x ln C since the window before.
        rise: ``rise`` rule: the window's mean loss is this x ln C above the run's lowest.
        attn_logit: the largest attention logit of the last trace step is at least this.
        grad_jump: the total grad norm is at least this x the median of the run's earlier steps.
        log_z: |mean log Z| over the window is at least this.
        update_ratio: the largest per-layer update/parameter ratio of the last trace step is at
            least this.
        signal_after: fraction of the run's steps before the signal rules may fire.
        divergence_factor: ``nonfinite`` also fires above this x ln C (the trainer's bound).
    """

    window: float = 0.1
    above: float | None = 1.5
    above_after: float = 0.0
    after: float = 0.8
    chance: float | None = 0.98
    stall: float = 0.02
    rise: float | None = None
    attn_logit: float | None = None
    grad_jump: float | None = None
    log_z: float | None = None
    update_ratio: float | None = None
    signal_after: float = 0.1
    divergence_factor: float = 10.0

    def text(self) -> str:
        """The settings as ``key=value`` pairs (those that differ from the defaults)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if getattr(self, f.name) != f.default}
        return ",".join(f"{k}={'none' if v is None else f'{v:g}'}" for k, v in sorted(d.items()))


# Presets as data. Chosen by replay on the tuning sweeps (grids/cpu/pruning/tune.yaml, vit_tiny on
# digits) and scored on the held-out ones (docs/methodology.md "Pruning", benchmarks/RESULTS.md
# "Pruning by replay"): the most doomed steps saved at the default trace interval among the settings
# that stopped no good run at any interval (1, 5, 10); a tie goes to the larger threshold. The
# attention-logit bound is in the units of that model and data: re-choose it by replay at another scale.
PRESETS: dict[str, PrunerSettings] = {
    "default": PrunerSettings(attn_logit=100.0),  # the loss rules, and attention logits that run away
    "loss": PrunerSettings(),  # the loss rules only: any model, no trace of attention needed
    "nonfinite": PrunerSettings(above=None, chance=None),  # NaN/inf or above the divergence bound only
}
SETTING_NAMES = tuple(f.name for f in dataclasses.fields(PrunerSettings))
_BOUNDS = {"after": (0.0, 1.0), "above_after": (0.0, 1.0), "signal_after": (0.0, 1.0), "window": (0.0, 1.0)}
_ZERO_OK = ("after", "above_after", "signal_after", "stall")


def parse(spec: str | Mapping[str, Any], source: str | None = None) -> PrunerSettings:
    """A pruner from its text (``default``, ``default:after=0.3,chance=none``) or mapping
    (``{preset: default, after: 0.3}``); a ``ConfigError`` names the bad preset, key or value.

    >>> parse("default:after=0.3,rise=0.4").rise
    0.4
    >>> parse({"preset": "nonfinite"}).chance is None
    True
    """
    if isinstance(spec, Mapping):
        items = dict(spec)
        name = items.pop("preset", "default")
    elif isinstance(spec, str):
        name, _, rest = spec.partition(":")
        items = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = part.partition("=")
            if not eq:
                raise ConfigError(f"pruner: {shown(part)} is not key=value (keys: {', '.join(SETTING_NAMES)})", source)
            items[key.strip()] = value.strip()
    else:
        raise ConfigError(f"pruner: expected a preset name or a mapping, got {shown(spec)}", source)
    if not isinstance(name, str) or name not in PRESETS:  # a YAML list or mapping is no name (nor hashable)
        raise ConfigError(f"pruner: {shown(name)} is not a preset (allowed: {', '.join(PRESETS)})", source)
    values: dict[str, float | None] = {}
    for key, value in items.items():
        if key not in SETTING_NAMES:
            raise ConfigError(f"pruner.{key}: not a setting (allowed: preset, {', '.join(SETTING_NAMES)})", source)
        values[key] = _number(key, value, source)
    return dataclasses.replace(PRESETS[name], **values)


def _number(key: str, value: Any, source: str | None) -> float | None:
    optional = key not in ("after", "above_after", "signal_after", "window", "stall", "divergence_factor")
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "off")):
        if optional:
            return None
        raise ConfigError(f"pruner.{key}: must be a number", source)
    try:
        v = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float
        v = math.nan
    lo, hi = _BOUNDS.get(key, (0.0, math.inf))
    if not (math.isfinite(v) and lo <= v <= hi and (v > 0 or key in _ZERO_OK)):
        raise ConfigError(f"pruner.{key}: {shown(value)} is not allowed (a number in "
                          f"{'(' if key not in _ZERO_OK else '['}{lo:g}, {hi:g}{']' if math.isfinite(hi) else ')'}"
                          f"{', or none to turn it off' if optional else ''})", source)
    return v


def canonical(spec: str | Mapping[str, Any] | None, source: str | None = None) -> str | None:
    """The one text of a pruner (what a run config stores and its id hashes), validated; None
    (off) for None, false, or the words none / off / false / null."""
    if spec is None or spec is False or (isinstance(spec, str) and spec.strip().lower() in OFF):
        return None
    settings = parse(spec, source)
    name = spec.get("preset", "default") if isinstance(spec, Mapping) else spec.partition(":")[0]
    base = PRESETS[name]
    diff = {f: getattr(settings, f) for f in SETTING_NAMES if getattr(settings, f) != getattr(base, f)}
    tail = ",".join(f"{k}={'none' if v is None else repr(float(v))}" for k, v in sorted(diff.items()))
    return f"{name}:{tail}" if tail else name


@dataclass(frozen=True)
class Verdict:
    """Why a run was stopped: the rule, the step it fired after, the signal values it saw."""

    rule: str
    step: int
    signals: dict[str, float]

    def signals_json(self) -> str:
        return json.dumps({k: (v if math.isfinite(v) else str(v)) for k, v in self.signals.items()}, sort_keys=True)


@dataclass
class Signals:
    """What a run has recorded so far: per step (loss, total grad norm, mean log Z) and per trace
    step (largest attention logit, largest update/parameter ratio over layers). Appended in step
    order, from the trainer's rows, a store's tables, or an Optuna trial's intermediate values."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    log_z: list[float] = field(default_factory=list)
    traced: list[int] = field(default_factory=list)
    attn_logit: list[float] = field(default_factory=list)
    update_ratio: list[float] = field(default_factory=list)

    def add_steps(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for r in rows:
            self.steps.append(int(r["step"]))
            self.loss.append(_float(r.get("loss")))
            self.grad_norm.append(_float(r.get("grad_norm")))
            self.log_z.append(_float(r.get("log_z")))

    def add_traces(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Per-layer rows (``grad_norms``), grouped by step: the step's largest values."""
        by_step: dict[int, list[Mapping[str, Any]]] = {}
        for r in rows:
            by_step.setdefault(int(r["step"]), []).append(r)
        for step in sorted(by_step):
            layer = by_step[step]
            self.traced.append(step)
            self.attn_logit.append(_nanmax(_float(r.get("attn_logit_max")) for r in layer))
            self.update_ratio.append(_nanmax(_float(r.get("update_ratio")) for r in layer))


def _float(v: Any) -> float:
    return math.nan if v is None else float(v)


def _nanmax(values: Iterable[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return max(vals) if vals else math.nan


def _mean(loss: np.ndarray, steps: np.ndarray, lo: float, hi: float) -> float:
    """The mean of the finite losses of steps in (lo, hi]."""
    sel = loss[(steps > lo) & (steps <= hi)]
    sel = sel[np.isfinite(sel)]
    return float(sel.mean()) if len(sel) else math.nan


def decide(s: PrunerSettings, sig: Signals, total_steps: int, n_classes: int, new_from: int = 0) -> Verdict | None:
    """Whether a run that has recorded ``sig`` should stop now, and why.

    Args:
        s: the rules and thresholds.
        sig: the run's signals so far.
        total_steps: the steps the run would train in all.
        n_classes: C of ln C (the loss at chance).
        new_from: the index in ``sig.steps`` of the first step not judged yet: ``nonfinite``
            looks at each new step (the trainer's flush judges the same steps).

    Returns:
        The first rule that fires (in ``RULES`` order), or None.

    >>> sig = Signals(); sig.add_steps({"step": i, "loss": 2.3} for i in range(80))
    >>> decide(PrunerSettings(), sig, total_steps=100, n_classes=10).rule
    'chance'
    >>> sig.add_steps({"step": i, "loss": 4.0} for i in range(80, 90))
    >>> decide(PrunerSettings(), sig, 100, 10).rule
    'above'
    >>> sig.add_steps([{"step": 90, "loss": float("nan")}])
    >>> decide(PrunerSettings(), sig, 100, 10, new_from=90).rule
    'nonfinite'
    """
    if not sig.steps:
        return None
    ln_c = math.log(max(n_classes, 2))
    loss = np.asarray(sig.loss, float)
    for i in range(new_from, len(loss)):
        v = loss[i]
        if not math.isfinite(v) or v > s.divergence_factor * ln_c:
            return Verdict("nonfinite", sig.steps[i], {"loss": v, "bound": s.divergence_factor * ln_c})
    now = sig.steps[-1]
    steps = np.asarray(sig.steps, float)
    w = max(1.0, round(s.window * total_steps))
    m_now = _mean(loss, steps, now - w, now)
    if s.above is not None and now + 1 >= s.above_after * total_steps and m_now >= s.above * ln_c:
        return Verdict("above", now, {"loss_window": m_now, "ln_c": ln_c})
    if now + 1 >= s.after * total_steps:
        if s.chance is not None:
            m_before = _mean(loss, steps, now - 2 * w, now - w)
            if m_before != m_before:  # nothing before the window: the first step's loss
                m_before = float(loss[0]) if math.isfinite(loss[0]) else m_now
            if m_now >= s.chance * ln_c and m_before - m_now < s.stall * ln_c:
                return Verdict("chance", now, {"loss_window": m_now, "loss_before": m_before, "ln_c": ln_c})
        if s.rise is not None:
            lowest = _lowest_window_mean(loss, steps, w)
            if m_now - lowest >= s.rise * ln_c:
                return Verdict("rise", now, {"loss_window": m_now, "loss_lowest": lowest, "ln_c": ln_c})
    if now + 1 < s.signal_after * total_steps:
        return None
    if s.attn_logit is not None and sig.attn_logit and sig.attn_logit[-1] >= s.attn_logit:
        return Verdict("attn_logit", now, {"attn_logit_max": sig.attn_logit[-1]})
    if s.grad_jump is not None and len(sig.grad_norm) > 1:
        g = np.asarray(sig.grad_norm, float)
        med = np.nanmedian(g[:-1]) if np.isfinite(g[:-1]).any() else math.nan
        if med > 0 and g[-1] >= s.grad_jump * med:
            return Verdict("grad_jump", now, {"grad_norm": float(g[-1]), "median_before": float(med)})
    if s.log_z is not None:
        lz = _mean(np.asarray(sig.log_z, float), steps, now - w, now)
        if abs(lz) >= s.log_z:
            return Verdict("log_z", now, {"log_z_window": lz})
    if s.update_ratio is not None and sig.update_ratio and sig.update_ratio[-1] >= s.update_ratio:
        return Verdict("update_ratio", now, {"update_ratio_max": sig.update_ratio[-1]})
    return None


def _lowest_window_mean(loss: np.ndarray, steps: np.ndarray, w: float) -> float:
    """The lowest mean loss over any ``w`` consecutive recorded steps (finite losses only)."""
    k = int(min(w, len(loss)))
    finite = np.where(np.isfinite(loss), loss, 0.0)
    n = np.isfinite(loss).astype(float)
    cs, cn = np.concatenate([[0.0], np.cumsum(finite)]), np.concatenate([[0.0], np.cumsum(n)])
    sums, counts = cs[k:] - cs[:-k], cn[k:] - cn[:-k]
    means = np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)
    return float(means.min()) if len(means) else math.inf


class RunPruner:
    """The pruner of one training run: fed the rows of each flush, it returns a verdict or None."""

    def __init__(self, settings: PrunerSettings, total_steps: int, n_classes: int):
        self.settings, self.total_steps, self.n_classes = settings, total_steps, n_classes
        self.signals = Signals()

    def observe(self, steps: list[dict[str, Any]], grads: list[dict[str, Any]]) -> Verdict | None:
        first = len(self.signals.steps)
        self.signals.add_steps(steps)
        self.signals.add_traces(grads)
        return decide(self.settings, self.signals, self.total_steps, self.n_classes, new_from=first)


def flush_points(total_steps: int, steps_per_epoch: int, every: int) -> list[int]:
    """The last step of each flush of a run traced every ``every`` steps: every ``every`` steps
    within an epoch, and at each epoch's end (where the trainer judges its pruner)."""
    out = []
    for start in range(0, total_steps, steps_per_epoch):
        end = min(start + steps_per_epoch, total_steps)
        out += [s - 1 for s in range(start + every, end, every)] + [end - 1]
    return out


def optuna_pruner(settings: PrunerSettings, total_steps: int, n_classes: int):
    """An Optuna ``BasePruner`` that runs :func:`decide` on a trial's intermediate values, read
    as the loss at each reported step (Optuna's pruners see only those; a trial reports what it
    has, a NaN included: unlike ``WilcoxonPruner``, a NaN prunes). The trial's user attribute
    ``prune_verdict`` says which rule fired."""
    import optuna

    class StabilityPruner(optuna.pruners.BasePruner):
        def __init__(self) -> None:
            self.settings, self.total_steps, self.n_classes = settings, total_steps, n_classes

        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:  # trial.should_prune() asks
            values = trial.intermediate_values
            if not values:
                return False
            sig = Signals()
            sig.add_steps({"step": k, "loss": values[k]} for k in sorted(values))
            return decide(self.settings, sig, self.total_steps, self.n_classes) is not None

    return StabilityPruner()
