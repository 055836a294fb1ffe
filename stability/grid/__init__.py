"""Grid runner: spec (YAML) -> plan (Optuna samplers) -> launch (submitit) -> state."""

from .plan import PlannedRun, make_plan
from .spec import GridSpec, load_spec, parse_spec

__all__ = ["GridSpec", "PlannedRun", "load_spec", "make_plan", "parse_spec"]
