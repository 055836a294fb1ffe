"""The loader of decoded-image datasets: one per split that lives across epochs (persistent
workers), each image's random draws seeded by (seed, epoch, index), and JPEG decoding on the GPU.

``data.batches`` builds a ``Loader`` once per split and options and keeps it on the
``DataBundle``; each epoch tells its batch sampler the epoch and start batch, so the workers
stay up and a resumed run still gets the same batches. With ``decode: gpu`` the workers only read
JPEG bytes; ``GpuDecoder`` decodes them with nvJPEG and crops, flips (and applies the policy)
on the GPU, with the same per-image seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .augment import seeded
from .workers import resolve_workers

__all__ = ["GpuDecoder", "Loader", "resolve_workers", "sample_seed"]

CROP_SCALE, CROP_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)  # RandomResizedCrop's defaults (the CPU path)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of image ``index``'s random draws in ``epoch`` of a run seeded ``seed``."""
    return ((seed * 1_000_003 + epoch) * 4_294_967_311 + index) % 2**63


class Seeded(Dataset):
    """``ds[i]`` with torch's generator seeded by the key's seed: ``ds[(i, seed)]``."""

    def __init__(self, ds: Any):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        i, s = key
        with seeded(s):
            return self.ds[i]


def encoded_bytes(ds: Any, i: int) -> bytes:
    """Image ``i``'s file bytes: a packed dataset's, or an ``ImageFolder``'s file."""
    if hasattr(ds, "encoded_bytes"):
        return ds.encoded_bytes(i)
    return Path(ds.samples[i][0]).read_bytes()


class Encoded(Dataset):
    """``(JPEG bytes as a uint8 tensor, label, seed)``: workers only read; the GPU decodes."""

    def __init__(self, ds: Any):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        i, s = key
        data = torch.frombuffer(bytearray(encoded_bytes(self.ds, i)), dtype=torch.uint8)
        return data, int(self.ds.targets[i]), s


def _collate_encoded(items: list) -> tuple[torch.Tensor, list[int], torch.Tensor, list[int]]:
    """One uint8 tensor of the batch's bytes and their lengths: a worker hands over one shared
    buffer per batch, not one per image (hundreds of small tensors cross processes slowly)."""
    data, labels, seeds = zip(*items, strict=True)
    return torch.cat(data), [len(d) for d in data], torch.tensor(labels), list(seeds)


class GpuDecoder:
    """JPEG bytes -> normalised (N, 3, size, size) float batch on ``device``: nvJPEG decode, then
    per image RandomResizedCrop, horizontal flip and the optional policy, drawn from each image's
    seed (as the CPU transform would be)."""

    def __init__(self, size: int, policy: Any, mean: tuple, std: tuple, device: torch.device):
        self.size, self.policy, self.device = size, policy, device
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255

    def decode(self, data: list[torch.Tensor]) -> list[torch.Tensor]:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg

        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:  # a PNG or CMYK file among the JPEGs (ImageNet has a few): one by one on the CPU
            return [decode_image(d, mode=ImageReadMode.RGB).to(self.device) for d in data]

    def __call__(self, data: torch.Tensor, lengths: list[int], labels: torch.Tensor, seeds: list[int]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.transforms import RandomResizedCrop

        out = []
        for img, s in zip(self.decode(list(data.split(lengths))), seeds, strict=True):
            with seeded(s):
                i, j, h, w = RandomResizedCrop.get_params(img, list(CROP_SCALE), list(CROP_RATIO))
                x = F.interpolate(img[None, :, i:i + h, j:j + w].float(), size=(self.size, self.size),
                                  mode="bilinear", antialias=True, align_corners=False)
                if torch.rand(1) < 0.5:
                    x = x.flip(-1)
                if self.policy is not None:  # torchvision's policies work on uint8 images
                    x = self.policy(x.round_().clamp_(0, 255).to(torch.uint8)).float()
            out.append(x)
        x = (torch.cat(out) - self.mean) / self.std
        return x, labels.to(self.device, non_blocking=True)


class Loader:
    """One split's ``DataLoader`` for a run's life; ``epoch(e, start)`` iterates epoch ``e`` from
    batch ``start``. ``sampler``: ``data.EpochBatches``; ``gpu``: (size, policy, mean, std) to
    decode on the GPU, or None."""

    def __init__(self, ds: Any, sampler: Any, workers: int, device: torch.device, *,
                 prefetch_factor: int = 2, gpu: tuple | None = None):
        self.sampler = sampler
        self.decoder = GpuDecoder(*gpu, device) if gpu is not None else None
        wrapped = (Encoded(ds) if gpu is not None else Seeded(ds)) if sampler.train else ds
        self.loader = DataLoader(
            wrapped, batch_sampler=sampler, num_workers=workers,
            collate_fn=_collate_encoded if gpu is not None else None,
            pin_memory=device.type == "cuda" and gpu is None, persistent_workers=workers > 0,
            prefetch_factor=prefetch_factor if workers > 0 else None,
            generator=torch.Generator().manual_seed(sampler.seed))

    def epoch(self, epoch: int, start: int) -> Any:
        self.sampler.set(epoch, start)
        batches = iter(self.loader)  # persistent workers: the same processes, told to start over
        if self.decoder is None:
            return batches
        return (self.decoder(*b) for b in batches)
