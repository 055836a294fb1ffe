"""Grid runner: spec (YAML) -> sampler (its plan) -> backend (submitit, local) -> state."""

from .plan import PlannedRun
from .samplers import SAMPLERS, Sampler, make_plan, sampler_for
from .spec import GridSpec, load_spec, parse_spec

__all__ = ["SAMPLERS", "GridSpec", "PlannedRun", "Sampler", "load_spec", "make_plan", "parse_spec", "sampler_for"]
