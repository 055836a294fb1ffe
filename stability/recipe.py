"""Training recipes as data: RunConfig fields set together (torch-free).

``paper``: Xiao et al. 2021's ImageNet recipe (via pycls/DeiT): AutoAugment, MixUp 0.8, CutMix
1.0 (one of the two per batch, half the time each), label smoothing 0.1, weight EMA with pycls'
alpha 1e-5 every 32 iterations. The paper-size grids (grids/*.yaml) write these values in their
``base:`` (tests/test_recipe.py checks they agree); the CPU grids keep their own measured choices.
"""

from __future__ import annotations

from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    "paper": {"auto_augment": "autoaugment", "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mix_prob": 1.0,
              "mix_switch_prob": 0.5, "label_smoothing": 0.1, "ema_alpha": 1.0e-5, "ema_period": 32},
}
