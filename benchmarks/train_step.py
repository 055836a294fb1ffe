"""Training-step throughput (images/s) of our ViT_P / ViT_C against timm's VisionTransformer.

timm gets the same width, depth, heads, MLP dim and patch; for ViT_C its patch embedding is our
conv stem (timm has none), so the comparison is of the transformer and training step code.
Forward + backward + AdamW step, same batch and dtype, models interleaved in each repetition.
Two estimates of ours/timm: best repetition over best repetition (noise on a shared machine only
ever slows a repetition down, so the fastest is the cleanest view of the code; it decides the
goal), and the median of per-repetition ratios (reported beside it).

    python benchmarks/train_step.py [--reps 9] [--steps 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, spread  # noqa: E402

from stability.models import build_model, count_complexity, model_spec  # noqa: E402
from stability.models.presets import VIT_SIZES  # noqa: E402
from stability.models.vit import ConvStem  # noqa: E402


class _StemEmbed(nn.Module):
    """timm ``embed_layer`` wrapper around our conv stem: (B, 3, H, W) -> (B, N, C)."""

    def __init__(self, stem: nn.Module, tokens: int):
        super().__init__()
        self.proj = stem
        self.num_patches = tokens
        self.patch_size = (1, 1)
        self.grid_size = (int(tokens ** 0.5),) * 2
        self.dynamic_img_pad = False

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)

    def feat_ratio(self, as_scalar=True):
        return 16


def timm_twin(name: str, image_size: int) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    spec = model_spec(name, image_size=image_size)
    size = VIT_SIZES["vit_" + spec.name.split("_", 2)[2]]
    kw = dict(img_size=image_size, patch_size=size.patch_size, embed_dim=size.width, depth=spec.depth,
              num_heads=size.heads, mlp_ratio=size.mlp_dim / size.width, num_classes=spec.num_classes,
              qkv_bias=True, class_token=True, global_pool="token")
    if spec.stem == "conv":
        stem = ConvStem(size.conv_kernels, size.conv_strides, (*size.conv_channels[:-1], size.width))
        kw["embed_layer"] = lambda **_: _StemEmbed(stem, spec.tokens)
    return VisionTransformer(**kw)


def step_fn(model: nn.Module, batch: int, image_size: int, device: str, dtype: torch.dtype | None,
            channels_last: bool = False, opt_kw: dict | None = None):
    """One forward + backward + AdamW step (``opt_kw``: e.g. ``fused=True``) on a fixed batch."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **(opt_kw or {}))
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        with torch.autocast(device, dtype=dtype) if dtype else torch.autocast(device, enabled=False):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def measure(models: dict[str, nn.Module], batch: int, image_size: int, device: str, reps: int,
            steps: int, dtype: torch.dtype | None = None, opt_kw: dict | None = None) -> dict[str, list[float]]:
    """images/s per model over ``reps`` interleaved repetitions of ``steps`` steps each."""
    fns = {k: step_fn(m.to(device).train(), batch, image_size, device, dtype, opt_kw=opt_kw)
           for k, m in models.items()}
    return time_steps(fns, batch, device, reps, steps)


def time_steps(fns: dict, batch: int, device: str, reps: int, steps: int) -> dict[str, list[float]]:
    """images/s per step function over ``reps`` interleaved repetitions of ``steps`` steps each."""
    for fn in fns.values():  # warm-up (allocator, kernels)
        fn()
        fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(steps):
                fn()
            if device == "cuda":
                torch.cuda.synchronize()
            out[k].append(batch * steps / (time.perf_counter() - t))
    return out


SIZES = [("vit_p_tiny", 32, 64), ("vit_c_tiny", 32, 64), ("vit_p_small", 32, 64), ("vit_c_small", 32, 64),
         ("vit_p_1gf", 224, 8), ("vit_c_1gf", 224, 8)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    lines = ["| model | px | batch | ours img/s | timm img/s | ours / timm (best / best) | median of ratios |",
             "|---|---|---|---|---|---|---|"]
    ratios = []
    for name, px, batch in SIZES:
        spec = model_spec(name, image_size=px)
        ours = build_model(spec)
        twin = timm_twin(name, px)
        p_ours, p_timm = sum(p.numel() for p in ours.parameters()), sum(p.numel() for p in twin.parameters())
        assert abs(p_ours - p_timm) / p_ours < 0.01, (name, p_ours, p_timm)  # the same network
        r = measure({"ours": ours, "timm": twin}, batch, px, args.device, args.reps, args.steps)
        median = statistics.median(a / b for a, b in zip(r["ours"], r["timm"], strict=True))
        ratio = max(r["ours"]) / max(r["timm"])
        ratios.append((name, ratio))
        lines.append(f"| {name} ({count_complexity(spec).flops / 1e9:.3f} GF) | {px} | {batch} | "
                     f"{spread(r['ours'])} | {spread(r['timm'])} | {ratio:.3f} | {median:.3f} |")
        print(lines[-1], flush=True)
    met = all(x >= 1.0 for _, x in ratios)
    worst = min(ratios, key=lambda t: t[1])
    lines += ["", f"Goal (best/best ratio >= 1.0 for every size): {'met' if met else 'not met'} "
                  f"(lowest: {worst[0]} {worst[1]:.3f})."]
    append_results(f"Training step throughput vs timm ({args.device}, fp32)", lines)


if __name__ == "__main__":
    main()
