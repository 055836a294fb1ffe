"""How a run's step executes on its device: torch.compile (on or off, and its mode), the
optimizer's implementation, the autocast dtype and torch's CPU threads; resolved from the config
(threads: from the launcher), recorded on the runs row (``compiled``, ``compile_mode``,
``optimizer_impl``, ``amp_dtype``, ``threads``). None of them is in the run id: they change speed,
and the numbers only by float rounding, which a short high-lr run can amplify to points of error
(on CPU the thread count splits the sums: a run is bit-identical only at the same ``threads``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .distributed import amp_dtype
from .optim import impl_of


def compile_net(net: nn.Module, mode: str) -> nn.Module:
    """``torch.compile(net)`` in ``mode`` (default | reduce-overhead: CUDA graphs | max-autotune),
    with static shapes. By default dynamo marks the batch dimension dynamic at the second batch
    size it sees, and the evaluation's batches (twice the training batch) came before the first
    step: every training step then ran a graph compiled for any batch size, not the one the
    benchmarks measure. ``evaluate`` pads its last batch, so no third size is compiled."""
    return torch.compile(net, dynamic=False, **({} if mode == "default" else {"mode": mode}))


def is_compiled(net: nn.Module) -> bool:
    """Whether ``net`` is ``torch.compile``'s wrapper (whose inputs should keep one shape)."""
    return isinstance(net, torch._dynamo.eval_frame.OptimizedModule)


def execution_columns(compiled: bool, mode: str, opt: torch.optim.Optimizer, device: torch.device) -> dict[str, Any]:
    """The runs-row columns saying how the step ran (what the optimizer really uses, not the setting)."""
    dtype = amp_dtype(device)
    return {"compiled": compiled, "compile_mode": mode if compiled else None, "optimizer_impl": impl_of(opt),
            "amp_dtype": None if dtype is None else str(dtype).removeprefix("torch."),
            "threads": torch.get_num_threads()}
