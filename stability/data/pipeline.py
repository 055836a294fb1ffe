"""The loader of decoded-image datasets: one per split that lives across epochs (persistent
workers), each image's random draws seeded by (seed, epoch, index), and JPEG decoding on the GPU.

``data.batches`` builds a ``Loader`` once per split and options and keeps it on the
``DataBundle``; each epoch tells its batch sampler the epoch and start batch, so the workers
stay up and a resumed run still gets the same batches. With ``decode: gpu`` the workers only read
JPEG bytes; ``GpuDecoder`` decodes them with nvJPEG and crops, flips and applies the policy on the
GPU, each for the whole batch at once, with the same per-image draws (each image's crop, flip
and policy in turn from one generator seeded as the CPU path seeds torch's; the policy through
``batch_policy``: each image's own draws, images that drew the same op transformed together),
in a thread on a side stream while the step runs (``prefetch.Prefetcher``: the same batches as
without it, tested).
"""

from __future__ import annotations

import errno
import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .augment import seeded
from .batch_policy import Seed, apply_policy, seeded_generator
from .prefetch import Prefetcher
from .workers import resolve_workers

__all__ = ["GpuDecoder", "Loader", "resolve_workers", "sample_seed"]

CROP_SCALE, CROP_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)  # RandomResizedCrop's defaults (the CPU path)


def crop_params(height: int, width: int, g: torch.Generator) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a RandomResizedCrop of a ``height`` x ``width`` image, drawn from
    ``g`` as torchvision's ``RandomResizedCrop.get_params`` draws from the global generator (the
    same values for the same seed: tested), so the draws are safe in the prefetch thread."""
    area = height * width
    log_ratio = torch.log(torch.tensor(CROP_RATIO))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(*CROP_SCALE, generator=g).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g)).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, size=(1,), generator=g).item())
            j = int(torch.randint(0, width - w + 1, size=(1,), generator=g).item())
            return i, j, h, w
    in_ratio = width / height  # ten misses: the central crop, as torchvision falls back
    if in_ratio < min(CROP_RATIO):
        w, h = width, int(round(width / min(CROP_RATIO)))
    elif in_ratio > max(CROP_RATIO):
        w, h = int(round(height * max(CROP_RATIO))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


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
            return named_item(self.ds, i)


def image_name(ds: Any, i: int) -> str:
    """Where image ``i`` of ``ds`` comes from: its file, or its path inside a packed dataset."""
    if hasattr(ds, "samples"):
        return str(ds.samples[i][0])
    if hasattr(ds, "paths"):
        return f"{getattr(ds, 'root', '')}:{ds.paths[i]}"
    return f"image {i}"


def named_item(ds: Any, i: int) -> Any:
    """``ds[i]``; an image that cannot be decoded (truncated, not an image) raises an ``OSError``
    that names it, so one bad file among a million is found from the message."""
    try:
        return ds[i]
    except OSError as e:
        raise OSError(e.errno or errno.EIO, f"unreadable image ({e})", image_name(ds, i)) from e


class Named(Dataset):
    """``ds[i]`` through :func:`named_item` (the validation split)."""

    def __init__(self, ds: Any):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Any:
        return named_item(self.ds, i)


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
    """JPEG bytes -> normalised (N, 3, size, size) float batch on ``device``: nvJPEG decode of the
    batch, then RandomResizedCrop and horizontal flip drawn from each image's seed (as the CPU
    transform draws them) and done for the whole batch at once: ``roi_align`` over the images
    padded to a common canvas, one kernel instead of one resize per image (which bound the
    first version at ~2,200 img/s on an H200). Resampling is bilinear with adaptive supersampling
    (``sampling_ratio=0``: every output pixel averages ceil(crop/size)^2 samples, as antialiasing
    does), close to but not bit-identical with the CPU path. The optional policy (``policy``:
    ``datasets.policy``'s torchvision AutoAugment / RandAugment) draws per image from the image's
    generator after its crop and flip draws, as the CPU transform's policy does (the same ops for
    the same seed: tested), and runs batched by op (``batch_policy.apply_policy``), bit-identical
    on CPU to calling it per image."""

    CANVAS_BYTES = 2 << 30  # a padded canvas larger than this is split (a few huge images)

    def __init__(self, size: int, policy: Any, mean: tuple, std: tuple, device: torch.device):
        self.size, self.policy, self.device = size, policy, device
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255

    def decode(self, data: list[torch.Tensor]) -> list[torch.Tensor]:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg

        if self.device.type == "cuda":
            try:
                return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError:  # a PNG or CMYK file among the JPEGs (ImageNet has a few): one by one
                pass
        return [decode_image(d, mode=ImageReadMode.RGB).to(self.device) for d in data]

    def crop(self, imgs: list[torch.Tensor], seeds: list[Seed]) -> torch.Tensor:
        """Each (3, H, W) uint8 image's seeded RandomResizedCrop, resized to ``size``, flipped with
        probability 1/2: a float (N, 3, size, size) batch in 0..255. ``seeds``: each image's seed,
        or its generator (advanced past the crop and flip draws)."""
        from torchvision.ops import roi_align

        boxes, flips = [], []
        for img, s in zip(imgs, seeds, strict=True):
            g = seeded_generator(s)
            i, j, h, w = crop_params(img.shape[-2], img.shape[-1], g)
            flips.append(bool(torch.rand(1, generator=g) < 0.5))
            boxes.append((j, i, j + w, i + h))  # x1, y1, x2, y2 in pixel edges (aligned=True)
        out = torch.empty(len(imgs), 3, self.size, self.size, device=self.device)
        for chunk in _canvas_chunks([im.shape[-2:] for im in imgs], self.CANVAS_BYTES):
            hmax = max(imgs[k].shape[-2] for k in chunk)
            wmax = max(imgs[k].shape[-1] for k in chunk)
            canvas = torch.zeros(len(chunk), 3, hmax, wmax, device=self.device)
            for c, k in enumerate(chunk):
                canvas[c, :, :imgs[k].shape[-2], :imgs[k].shape[-1]] = imgs[k]
            rois = torch.tensor([(c, *boxes[k]) for c, k in enumerate(chunk)], dtype=torch.float32)
            out[chunk] = roi_align(canvas, rois.to(self.device), (self.size, self.size), 1.0, 0, aligned=True)
        flip = torch.tensor(flips).to(self.device).view(-1, 1, 1, 1)
        return torch.where(flip, out.flip(-1), out)

    def __call__(self, data: torch.Tensor, lengths: list[int], labels: torch.Tensor, seeds: list[int]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        # one generator per image, drawn from in the CPU transform's order (crop, flip, policy), so
        # the policy's draws are the CPU path's too (seeded apart with seed + 1, AutoAugment's
        # matched 19 and RandAugment's 1 of 200 images)
        gens = [seeded_generator(s) for s in seeds]
        x = self.crop(self.decode(list(data.split(lengths))), gens)
        if self.policy is not None:  # on uint8 images, as torchvision's policies are defined
            u8 = x.round_().clamp_(0, 255).to(torch.uint8)
            x = apply_policy(self.policy, u8, gens).float()
        x = (x - self.mean) / self.std
        return x, labels.to(self.device, non_blocking=True)


def _canvas_chunks(shapes: list, budget: int) -> list[list[int]]:
    """Indices of images grouped (by size) so that each group's padded float canvas fits
    ``budget`` bytes; one group when it all fits."""
    order = sorted(range(len(shapes)), key=lambda k: shapes[k][0] * shapes[k][1])
    chunks: list[list[int]] = [[]]
    hmax = wmax = 0
    for k in order:
        h, w = max(hmax, shapes[k][0]), max(wmax, shapes[k][1])
        if chunks[-1] and (len(chunks[-1]) + 1) * 3 * h * w * 4 > budget:
            chunks.append([])
            h, w = shapes[k]
        chunks[-1].append(k)
        hmax, wmax = h, w
    return chunks


class Loader:
    """One split's ``DataLoader`` for a run's life; ``epoch(e, start)`` iterates epoch ``e`` from
    batch ``start``. ``sampler``: ``data.EpochBatches``; ``gpu``: (size, policy, mean, std) to
    decode on the GPU, or None; ``overlap``: decode the next batches in a thread on a side stream
    while the step runs (``prefetch.Prefetcher``), else in the training thread before each step."""

    def __init__(self, ds: Any, sampler: Any, workers: int, device: torch.device, *,
                 prefetch_factor: int = 2, gpu: tuple | None = None, overlap: bool = True):
        self.sampler, self.device, self.overlap = sampler, device, overlap
        self.decoder = GpuDecoder(*gpu, device) if gpu is not None else None
        self.prefetcher: Prefetcher | None = None
        wrapped = (Encoded(ds) if gpu is not None else Seeded(ds)) if sampler.train else Named(ds)
        self.loader = DataLoader(
            wrapped, batch_sampler=sampler, num_workers=workers,
            collate_fn=_collate_encoded if gpu is not None else None,
            pin_memory=device.type == "cuda" and gpu is None, persistent_workers=workers > 0,
            prefetch_factor=prefetch_factor if workers > 0 else None,
            generator=torch.Generator().manual_seed(sampler.seed))

    def epoch(self, epoch: int, start: int) -> Any:
        self.close()  # the last epoch's thread may still be reading the loader: stopped before it restarts
        self.sampler.set(epoch, start)
        batches = iter(self.loader)  # persistent workers: the same processes, told to start over
        if self.decoder is None:
            return batches
        if self.overlap:
            self.prefetcher = Prefetcher(batches, self.decoder, self.device)
            return self.prefetcher
        return (self.decoder(*b) for b in batches)

    def close(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.close()
            self.prefetcher = None
