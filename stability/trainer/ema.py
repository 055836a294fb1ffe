"""Exponential moving average of a model's weights, with pycls' semantics.

pycls (``core/net.py`` ``update_model_ema``; ``OPTIM.EMA_ALPHA`` 1e-5, ``EMA_UPDATE_PERIOD``
32): at every ``period``-th batch of an epoch, every entry of the state dict (buffers such as
BatchNorm statistics included) moves ``ema = (1 - a) * ema + a * w`` with
``a = min(1, alpha * batch_size / epochs * period)``, and during warmup the weights are copied
(``a = 1``). Summed over a run, ``a`` x updates = ``alpha`` x training images: the number of
time constants the average spans does not depend on batch size or epochs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """Holds the averaged copy of ``model``; ``update`` is called after each optimizer step."""

    def __init__(self, model: nn.Module, alpha: float, period: int, batch_size: int, epochs: int,
                 warmup_epochs: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.period = period
        self.alpha = min(1.0, alpha * batch_size / epochs * period)
        self.warmup_epochs = warmup_epochs

    def due(self, batch: int) -> bool:
        """pycls updates at batches 0, period, 2 * period ... of every epoch."""
        return batch % self.period == 0

    @torch.no_grad()
    def update(self, model: nn.Module, epoch: int) -> None:
        a = 1.0 if epoch < self.warmup_epochs else self.alpha
        src = model.state_dict()
        floats, targets = [], []
        for name, ema in self.model.state_dict().items():
            if ema.is_floating_point():
                floats.append(src[name].detach())
                targets.append(ema)
            else:  # integer buffers (BatchNorm's num_batches_tracked): take the latest
                ema.copy_(src[name])
        if a == 1.0:
            torch._foreach_copy_(targets, floats)
        else:
            torch._foreach_lerp_(targets, floats, a)  # ema + a * (w - ema)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


def make_ema(model: nn.Module, alpha: float, period: int, batch_size: int, epochs: int,
             warmup_epochs: float) -> WeightEMA | None:
    """A ``WeightEMA``, or None when ``period`` is 0 (EMA off)."""
    if period <= 0:
        return None
    return WeightEMA(model, alpha, period, batch_size, epochs, warmup_epochs)
