"""torchvision's AutoAugment / RandAugment applied to a whole uint8 batch, each image with its own
seeded draws, bit-identical (on CPU) to calling the policy image by image.

Each image's ops are drawn as the policy's own ``forward`` draws them from torch's global CPU
generator seeded with the image's seed, but from a ``torch.Generator`` of its own seeded the same
(the same values: tested), so the drawing is safe in the prefetch thread while the training
thread draws from the global generator (a few scalar draws per image). A generator can be passed
instead of a seed and is drawn from where it stands: the GPU decoder passes each image's, past its
crop and flip draws, as the CPU transform's policy draws after them from the one seeded generator.
Then, op slot by op slot, the images that drew the same (op, magnitude) are transformed together
as one sub-batch: a few dozen op calls per batch instead of one policy call per image. The op
tables and the op implementation are the policy object's own (private) torchvision attributes,
read rather than copied, so a torchvision change shows up here too; a missing one is named in the
error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torchvision.transforms.v2 import AutoAugment, RandAugment

__all__ = ["apply_policy", "policy_draws", "seeded_generator"]

Draw = tuple[str, float]  # (transform id, magnitude) of an op an image gets
Seed = int | torch.Generator  # an image's seed, or its generator to go on drawing from

# the private torchvision v2 names used here, per policy class
_COMMON = ("_AUGMENTATION_SPACE", "_apply_image_or_video_transform", "_fill", "interpolation")
_NEEDS = {"AutoAugment": (*_COMMON, "_policies"),
          "RandAugment": (*_COMMON, "num_ops", "magnitude", "num_magnitude_bins")}
_AUTOAUGMENT_BINS = 10  # AutoAugment.forward's fixed magnitude bin count
# Contrast blends with each image's mean grey level, a float32 sum of H*W integer greys (0..255).
# Below 2**24 every partial sum is an exact integer, so the thread split and order of the sum
# (which differ between one image and a batch) cannot change it; above, Contrast goes image by image.
_EXACT_SUM = 2**24


def seeded_generator(seed: Seed) -> torch.Generator:
    """A ``torch.Generator`` seeded as ``augment.seeded`` seeds torch's global one (the same
    draws), or ``seed`` itself when it is a generator already (drawn from where it stands)."""
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(int(seed) % 2**63)


def _per_image(transform_id: str, height: int, width: int) -> bool:
    return transform_id == "Contrast" and height * width * 255 >= _EXACT_SUM


def _check(policy: Any) -> str:
    """The policy's class name, once every private attribute used here is known to exist. The
    exact classes only: a subclass may draw or apply otherwise."""
    kind = type(policy).__name__
    if kind not in _NEEDS:
        raise TypeError(f"batched policy: expected torchvision.transforms.v2.AutoAugment or RandAugment, got {kind}")
    missing = [n for n in _NEEDS[kind] if not hasattr(policy, n)]
    if missing:
        import torchvision

        raise RuntimeError(f"batched policy: torchvision {torchvision.__version__}'s {kind} has no "
                           f"{', '.join(missing)}; stability.data.batch_policy draws and applies ops "
                           f"through these as {kind}.forward does and must follow the change")
    return kind


def _draw_one(policy: Any, kind: str, magnitudes: Callable[[str, int], list[float] | None],
              g: torch.Generator) -> list[Draw | None]:
    """One image's ops slot by slot (None: skipped), from ``g`` in the order ``forward`` draws
    them from the global generator: the sub-policy (AutoAugment) or each op (RandAugment, as
    ``_get_random_item`` draws it), then per op its probability (AutoAugment) and the sign of a
    signed magnitude."""
    space = policy._AUGMENTATION_SPACE
    if kind == "AutoAugment":
        ops = policy._policies[int(torch.randint(len(policy._policies), (), generator=g))]
        n, bins = len(ops), _AUTOAUGMENT_BINS
    else:
        n, bins = policy.num_ops, policy.num_magnitude_bins
    slots: list[Draw | None] = []
    for k in range(n):
        if kind == "AutoAugment":
            transform_id, probability, index = ops[k]
            if not torch.rand((), generator=g) <= probability:
                slots.append(None)
                continue
        else:
            keys = tuple(space)
            transform_id, index = keys[int(torch.randint(len(keys), (), generator=g))], policy.magnitude
        table = magnitudes(transform_id, bins)
        if table is None:
            slots.append((transform_id, 0.0))
            continue
        magnitude = table[index]
        if space[transform_id][1] and torch.rand((), generator=g) <= 0.5:
            magnitude *= -1
        slots.append((transform_id, magnitude))
    return slots


def _slots(policy: Any, seeds: Sequence[Seed], height: int, width: int) -> list[list[Draw | None]]:
    kind = _check(policy)
    space, cache = policy._AUGMENTATION_SPACE, {}  # magnitudes as forward's float(table[index])

    def magnitudes(transform_id: str, bins: int) -> list[float] | None:  # the same for the whole batch
        if (transform_id, bins) not in cache:
            table = space[transform_id][0](bins, height, width)
            cache[transform_id, bins] = None if table is None else [float(m) for m in table]
        return cache[transform_id, bins]

    return [_draw_one(policy, kind, magnitudes, seeded_generator(s)) for s in seeds]


def policy_draws(policy: AutoAugment | RandAugment, seeds: Sequence[Seed], height: int, width: int) -> list[list[Draw]]:
    """The ops each image gets, in order, as ``policy`` applied to one (…, height, width) image
    with torch's generator seeded ``seeds[k]`` draws them (skipped AutoAugment ops left out;
    RandAugment's ``Identity`` kept: it is drawn).

    Args:
        policy: a ``torchvision.transforms.v2.AutoAugment`` or ``RandAugment`` (``datasets.policy``).
        seeds: one generator seed per image, or a generator (advanced past the draws).
        height: the images' height (translation magnitudes scale with it).
        width: the images' width.
    """
    return [[d for d in slots if d is not None] for slots in _slots(policy, seeds, height, width)]


def apply_policy(policy: AutoAugment | RandAugment, images: torch.Tensor, seeds: Sequence[Seed]) -> torch.Tensor:
    """``policy`` applied to each image of a batch with its own seeded draws, batched by op:
    on CPU, bit-identical to ``torch.cat([policy(images[k:k+1]) under seeded(seeds[k])])``.

    Args:
        policy: a ``torchvision.transforms.v2.AutoAugment`` or ``RandAugment`` (``datasets.policy``);
            its interpolation and fill are used.
        images: uint8 (N, C, H, W) batch, on any device.
        seeds: N generator seeds, one per image (as ``augment.seeded`` takes them), or generators
            drawn from where they stand (advanced past the draws): then bit-identical to the
            policy called with torch's generator in that state.

    Returns:
        A new uint8 (N, C, H, W) batch (``images`` is left as it is).
    """
    if images.ndim != 4 or len(seeds) != images.shape[0]:
        raise ValueError(f"apply_policy: expected (N, C, H, W) images and N seeds, got {tuple(images.shape)} "
                         f"and {len(seeds)} seeds")
    slots = _slots(policy, seeds, images.shape[-2], images.shape[-1])
    apply, how = policy._apply_image_or_video_transform, {"interpolation": policy.interpolation, "fill": policy._fill}
    out = images.clone()
    for slot in range(max((len(s) for s in slots), default=0)):
        groups: dict[Draw, list[int]] = {}
        for k, image_slots in enumerate(slots):
            draw = image_slots[slot]
            if draw is not None and draw[0] != "Identity":
                groups.setdefault(draw, []).append(k)
        for (transform_id, magnitude), members in groups.items():
            if _per_image(transform_id, out.shape[-2], out.shape[-1]):
                for k in members:
                    out[k:k + 1] = apply(out[k:k + 1], transform_id, magnitude, **how)
                continue
            index = torch.tensor(members, device=out.device)
            out.index_copy_(0, index, apply(out.index_select(0, index), transform_id, magnitude, **how))
    return out
