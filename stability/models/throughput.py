"""The measured throughput table (``throughput.json`` beside this file), read as typed rows.

Every figure in it is copied from ``benchmarks/RESULTS.md`` with the section, date and commit it
came from; a device, preset or setting that was not measured is absent. The cost planner
(``grid/cost.py``) reads it; ``--gpu`` names a device by its key here (``h200``). Torch-free.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

TABLE = Path(__file__).with_name("throughput.json")


@dataclass(frozen=True)
class Device:
    key: str  # what --gpu takes: "h200"
    name: str  # as torch.cuda.get_device_name says it: "NVIDIA H200"
    peak_bf16_tflops: float  # dense bf16 peak, for the FLOPs-at-MFU fallback


@dataclass(frozen=True)
class StepRate:
    """One training step alone (forward, backward, optimizer) on one GPU."""

    device: str
    model: str  # a canonical preset name: vit_p_4gf
    image_size: int
    batch: int  # per GPU
    compile: bool
    dtype: str
    img_s: float
    source: str


@dataclass(frozen=True)
class DecodeRate:
    """The trainer's loader alone: ``workers`` CPU processes decoding JPEGs (``workers`` 0 for
    GPU decoding), ``img_s`` over all of them."""

    host: str  # the machine it ran on
    device: str | None  # the GPU on that machine (None: a CPU-only machine)
    dataset: str
    policy: str  # auto_augment
    workers: int
    image_size: int
    img_s: float
    source: str
    note: str = ""
    decoder_img_s: float | None = None  # GPU decoding: the decoder's own GPU work alone (it shares the GPU)

    @property
    def per_worker(self) -> float:
        return self.img_s / max(self.workers, 1)


@dataclass(frozen=True)
class Throughput:
    devices: dict[str, Device]
    default_device: str
    step: tuple[StepRate, ...]
    cpu_decode: tuple[DecodeRate, ...]
    gpu_decode: tuple[DecodeRate, ...]

    def device(self, key: str) -> Device:
        """The device ``key`` names; ``ConfigError`` naming the allowed keys when none does."""
        if key.lower() not in self.devices:  # H200 or h200: the card's name as people write it
            raise ConfigError(f"--gpu: no measured throughput for {key!r} (allowed: {', '.join(self.devices)})")
        return self.devices[key.lower()]


@functools.cache
def load(path: Path = TABLE) -> Throughput:
    """The table at ``path`` (the shipped one by default)."""
    d = json.loads(path.read_text())
    devices = {k: Device(k, v["name"], float(v["peak_bf16_tflops"])) for k, v in d["devices"].items()}
    gpu = tuple(DecodeRate(host=f"{r['device']} VM", workers=0, **{k: v for k, v in r.items() if k != "batch"})
                for r in d["gpu_decode"])
    return Throughput(devices, d["default_device"], tuple(StepRate(**r) for r in d["step"]),
                      tuple(DecodeRate(**r) for r in d["cpu_decode"]), gpu)
