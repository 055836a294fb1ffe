"""Batch augmentation on the device: random affine moves that take content off the patch grid.

The embedded digits are 8x8 images upsampled to 32 px, so every 4x4 patch of ViT_P covers about
one original pixel at a fixed place: there is nothing finer than a patch for a conv stem to see
and nothing that ever moves across patch borders. ``shift`` translates each image by up to one
patch (±4 px at 32 px), ``affine`` adds scale 0.85–1.15 and rotation ±15°, the kind of geometry
the paper's heavy augmentation (RandAugment-like policies, crops) brings. Draws come from a
generator seeded by (run seed, step, rank), so a resumed run sees the same augmented batches.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F

SHIFT_PATCHES = 1.0  # translation up to one 4 px patch of a 32 px image: 0.25 in [-1, 1] units
SCALE = (0.85, 1.15)
ROTATE_DEG = 15.0


def augment_batch(x: torch.Tensor, kind: str, seed: int) -> torch.Tensor:
    """``x`` (N, C, H, W) moved by a random per-image affine map; ``kind`` one of ``AUGMENTS``."""
    if kind == "none":
        return x
    n = x.shape[0]
    g = torch.Generator(device="cpu").manual_seed(seed)
    shift = 2 * SHIFT_PATCHES * 4 / x.shape[-1]  # one 4 px patch in grid units ([-1, 1] = width)
    t = (torch.rand(n, 2, generator=g) * 2 - 1) * shift
    if kind == "affine":
        s = SCALE[0] + torch.rand(n, generator=g) * (SCALE[1] - SCALE[0])
        a = (torch.rand(n, generator=g) * 2 - 1) * math.radians(ROTATE_DEG)
    else:
        s, a = torch.ones(n), torch.zeros(n)
    theta = torch.stack([torch.stack([s * torch.cos(a), -s * torch.sin(a), t[:, 0]], 1),
                         torch.stack([s * torch.sin(a), s * torch.cos(a), t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    # border padding repeats the edge (the digits' background), so no black frame appears
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


@contextmanager
def seeded(seed: int):
    """torch's global CPU generator seeded with ``seed`` for the block, then restored: torchvision's
    random transforms draw from it, and the rest of the run must not see those draws. Only the
    CPU generator: ``torch.manual_seed`` would also reseed every CUDA generator (the training's
    own stream) and costs ~200 µs a call, which capped the GPU decoder's per-image draws at
    ~4,000 img/s."""
    state = torch.get_rng_state()
    torch.default_generator.manual_seed(seed % 2**63)
    try:
        yield
    finally:
        torch.set_rng_state(state)
