"""How a run's step executes on its device: torch.compile (on or off, and its mode), the
optimizer's implementation and the autocast dtype; resolved from the config, recorded on the
runs row (``compiled``, ``compile_mode``, ``optimizer_impl``, ``amp_dtype``). None of them is in
the run id: they change speed, and the numbers only by float rounding."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .distributed import amp_dtype
from .optim import impl_of


def compile_net(net: nn.Module, mode: str) -> nn.Module:
    """``torch.compile(net)`` in ``mode`` (default | reduce-overhead: CUDA graphs | max-autotune)."""
    return torch.compile(net) if mode == "default" else torch.compile(net, mode=mode)


def execution_columns(compiled: bool, mode: str, opt: torch.optim.Optimizer, device: torch.device) -> dict[str, Any]:
    """The runs-row columns saying how the step ran (what the optimizer really uses, not the setting)."""
    dtype = amp_dtype(device)
    return {"compiled": compiled, "compile_mode": mode if compiled else None, "optimizer_impl": impl_of(opt),
            "amp_dtype": None if dtype is None else str(dtype).removeprefix("torch.")}
