"""The batched, seeded per-image policy (``data.batch_policy``) against torchvision's own policy
called image by image under the same seeds: the same draws and bit-identical images on CPU."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stability.data.augment import seeded
from stability.data.batch_policy import apply_policy, policy_draws
from stability.data.datasets import policy
from stability.data.pipeline import sample_seed

NAMES = ("autoaugment", "randaugment")


def _per_image(p, images, seeds):
    """The reference: the policy called once per image, under its seed (GpuDecoder's old loop)."""
    parts = []
    for k, s in enumerate(seeds):
        with seeded(s):
            parts.append(p(images[k:k + 1]))
    return torch.cat(parts)


def _replayed_draws(p, seeds, height, width):
    """The (op, magnitude) pairs torchvision's own forward applies, recorded on a stand-in image."""
    seen: list = []
    p._apply_image_or_video_transform = lambda img, t, m, **kw: seen.append((t, m)) or img  # this instance only
    out = []
    try:
        for s in seeds:
            seen.clear()
            with seeded(s):
                p(torch.zeros(1, 1, 1, 1, dtype=torch.uint8).expand(1, 3, height, width))
            out.append(list(seen))
    finally:
        del p._apply_image_or_video_transform
    return out


def _images(n, height, width, seed):
    return torch.randint(0, 256, (n, 3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("name", NAMES)
def test_batched_policy_is_bit_identical_to_the_per_image_policy(name, size):
    p = policy(name)
    drawn = set()
    for batch in range(6):  # 6 x 32 images: every op of the policy is drawn, most several times
        seeds = [sample_seed(batch, 1, k) for k in range(32)]  # the images' seeds
        x = _images(32, size, size, batch)
        got = apply_policy(p, x, seeds)
        assert got.dtype == torch.uint8 and torch.equal(got, _per_image(p, x, seeds)), (name, size, batch)
        assert torch.equal(x, _images(32, size, size, batch))  # the input is left as it was
        drawn |= {t for d in policy_draws(p, seeds, size, size) for t, _ in d}
    ops = {t for sub in p._policies for t, _, _ in sub} if name == "autoaugment" else set(p._AUGMENTATION_SPACE)
    assert drawn == ops


def test_contrast_on_large_images_stays_bit_identical():
    """Above 2**24 / 255 pixels a single image's grey-level sum is inexact and thread-split: the
    Contrast images then go one by one (the only per-image path)."""
    p = policy("randaugment")
    seeds = [s for s in range(300) if any(t == "Contrast" for t, _ in policy_draws(p, [s], 300, 260)[0])][:4]
    x = _images(4, 300, 260, 0)
    assert len(seeds) == 4 and torch.equal(apply_policy(p, x, seeds), _per_image(p, x, seeds))


@pytest.mark.parametrize("name", NAMES)
def test_draws_are_those_torchvision_applies(name):
    p = policy(name)
    seeds = list(range(200))
    draws = policy_draws(p, seeds, 48, 80)
    assert draws == _replayed_draws(p, seeds, 48, 80)
    shifts = {t: abs(m) for d in policy_draws(policy("randaugment"), seeds, 48, 80) for t, m in d}
    assert shifts["TranslateX"] > shifts["TranslateY"] > 0  # scaled by the width (80 px) and height (48)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(NAMES), seeds=st.lists(st.integers(0, 2**63), min_size=1, max_size=6),
       height=st.integers(4, 24), width=st.integers(4, 24))
def test_any_seeds_and_sizes_give_torchvisions_draws_and_images(name, seeds, height, width):
    p = policy(name)
    assert policy_draws(p, seeds, height, width) == _replayed_draws(p, seeds, height, width)
    x = _images(len(seeds), height, width, seeds[0] % 1000)
    assert torch.equal(apply_policy(p, x, seeds), _per_image(p, x, seeds))


@pytest.mark.parametrize("name", NAMES)
def test_generators_are_drawn_from_where_they_stand(name):
    """Generators instead of seeds (the GPU decoder's, past each image's crop and flip draws):
    the policy called image by image with torch's generator seeded and advanced alike."""
    p, seeds = policy(name), [sample_seed(2, 0, k) for k in range(24)]

    def advanced(s):  # a varying number of draws before the policy's, as crops make (4 to 44)
        g = torch.Generator().manual_seed(s)
        torch.rand(4 * (1 + s % 11), generator=g)
        return g

    x = _images(len(seeds), 32, 32, 0)
    want = []
    for k, s in enumerate(seeds):
        with seeded(s):
            torch.rand(4 * (1 + s % 11))
            want.append(p(x[k:k + 1]))
    assert torch.equal(apply_policy(p, x, [advanced(s) for s in seeds]), torch.cat(want))
    # not the seeds' own draws: drawing afresh from each seed would fail the check above
    assert policy_draws(p, [advanced(s) for s in seeds], 32, 32) != policy_draws(p, seeds, 32, 32)


def test_unusable_policies_are_named():
    from torchvision.transforms import v2

    with pytest.raises(TypeError, match="got TrivialAugmentWide"):
        apply_policy(v2.TrivialAugmentWide(), _images(1, 8, 8, 0), [0])
    p = policy("autoaugment")
    del p._policies  # what a torchvision that renamed it would look like
    with pytest.raises(RuntimeError, match="AutoAugment has no _policies"):
        policy_draws(p, [0], 8, 8)
    with pytest.raises(ValueError, match="N seeds"):
        apply_policy(policy("randaugment"), _images(2, 8, 8, 0), [0])
