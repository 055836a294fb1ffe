"""Vision Transformer with a patchify or a convolutional stem (Xiao et al. 2021).

Follows pycls' ``vit.py``: class token, learned position embedding, pre-LN blocks (eps 1e-6),
GELU MLP, no dropout, final LayerNorm, linear head on the class token (zero-initialised).
Attention uses ``F.scaled_dot_product_attention`` (fused kernels where available).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class PatchifyStem(nn.Module):
    """One p x p, stride-p convolution from RGB to the model width."""

    def __init__(self, width: int, patch_size: int, in_chans: int = 3):
        super().__init__()
        self.patchify = nn.Conv2d(in_chans, width, patch_size, stride=patch_size, bias=True)
        fan_in = in_chans * patch_size * patch_size
        nn.init.trunc_normal_(self.patchify.weight, std=math.sqrt(1.0 / fan_in))
        nn.init.zeros_(self.patchify.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.patchify(x)


class ConvStem(nn.Module):
    """3x3 conv-BN-ReLU layers, then a 1x1 conv (with bias) to the width.

    ``channels[-1]`` is the width; the last kernel must be 1 (the paper's 1x1 projection).
    Init as pycls ``init_weights_vit``: 3x3 convs normal std sqrt(2 / out_channels), the 1x1
    normal std sqrt(1 / out_channels) with a zero bias; BatchNorm at PyTorch's default.
    """

    def __init__(
        self,
        kernels: Sequence[int],
        strides: Sequence[int],
        channels: Sequence[int],
        in_chans: int = 3,
    ):
        super().__init__()
        if not (len(kernels) == len(strides) == len(channels)) or kernels[-1] != 1:
            raise ValueError("conv stem: kernels/strides/channels must match and end with a 1x1")
        layers: list[nn.Module] = []
        c_in = in_chans
        for k, s, c in zip(kernels[:-1], strides[:-1], channels[:-1], strict=True):
            conv = nn.Conv2d(c_in, c, k, stride=s, padding=k // 2, bias=False)
            nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(2.0 / c))
            layers += [conv, nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.layers = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c_in, channels[-1], 1, stride=strides[-1], bias=True)
        nn.init.normal_(self.proj.weight, mean=0.0, std=math.sqrt(1.0 / channels[-1]))
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.layers(x))


ENTROPY_BATCH = 16  # examples of the batch whose attention entropy a probe averages


class Attention(nn.Module):
    """Multi-head self-attention. ``qk_norm``: a LayerNorm on each head's queries and keys before
    the dot product (Dehghani et al. 2023; Wortsman et al. 2023 §3.1.1), which bounds the
    attention logits. With ``probe`` set, the forward also records the largest attention logit
    z = q·k/sqrt(d_h) (over heads, tokens and batch) and the mean attention entropy in nats: the
    fused kernel does not return logits, so a probed forward pays one extra QKᵀ (trace steps only)."""

    def __init__(self, width: int, heads: int, qk_norm: bool = False):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        head_dim = width // heads
        self.q_norm = nn.LayerNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        # As torch.nn.MultiheadAttention (which pycls uses): xavier in-projection, zero biases.
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.proj.bias)
        self.probe = False
        self.probed: torch.Tensor | None = None  # (max logit, mean entropy) of the last probed forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.probe:
            self.probed = attention_stats(q.detach(), k.detach())
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


def attention_stats(q: torch.Tensor, k: torch.Tensor, entropy_batch: int = ENTROPY_BATCH) -> torch.Tensor:
    """``[max z, mean entropy]`` of the attention of ``q``, ``k`` (B, H, N, d_h): z = q·k/sqrt(d_h)
    (in q's dtype, bf16 under autocast on a GPU, as the attention itself computes it), the max
    over batch, heads and tokens; the entropy of softmax(z) over keys in nats, in float32,
    averaged over heads, queries and the first ``entropy_batch`` examples (the full-batch softmax
    cost a quarter of a 4GF ViT step on an H200). A device tensor (no sync)."""
    z_max = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).amax().float()
    qe, ke = q[:entropy_batch].float(), k[:entropy_batch].float()
    logp = ((qe @ ke.transpose(-2, -1)) * q.shape[-1] ** -0.5).log_softmax(-1)
    entropy = -(logp.exp() * logp).sum(-1).mean()
    return torch.stack([z_max, entropy])


class MLP(nn.Module):
    def __init__(self, width: int, mlp_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.normal_(fc.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, width: int, mlp_dim: int, heads: int, qk_norm: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads, qk_norm)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = MLP(width, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """ViT_P (``stem`` is a PatchifyStem) or ViT_C (a ConvStem); ``tokens`` = stem output grid."""

    def __init__(
        self,
        stem: nn.Module,
        *,
        tokens: int,
        width: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        num_classes: int,
        qk_norm: bool = False,
    ):
        super().__init__()
        self.stem = stem
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.empty(1, tokens + 1, width).normal_(std=0.02))
        self.blocks = nn.ModuleList(Block(width, mlp_dim, heads, qk_norm) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))

    def no_weight_decay(self) -> set[str]:
        """Embeddings a recipe may exempt from weight decay (timm's convention; the paper and
        pycls decay them: ``RunConfig.decay_embeddings``)."""
        return {"cls_token", "pos_embed"}

    def attention_layers(self) -> dict[str, Attention]:
        """The attention of each traced layer (``layer_groups``' names), for the logit probe."""
        return {f"blocks.{i}": b.attn for i, b in enumerate(self.blocks)}

    def layer_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        """Parameters grouped by layer in input -> output order, for gradient tracing."""
        groups = [("stem", list(self.stem.parameters())), ("embed", [self.cls_token, self.pos_embed])]
        groups += [(f"blocks.{i}", list(b.parameters())) for i, b in enumerate(self.blocks)]
        groups.append(("head", list(self.norm.parameters()) + list(self.head.parameters())))
        return groups


