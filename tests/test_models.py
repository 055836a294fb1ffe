import json

import pytest
import torch

from stability.models import (
    PAPER_COMPLEXITY,
    REGNET_SIZES,
    VIT_SIZES,
    build_model,
    count_complexity,
    layer_groups,
    model_spec,
)
from stability.models.table import preset_names

from .conftest import run_cli


@pytest.mark.parametrize("name", preset_names())
def test_forward_shape_at_preset_resolution(name):
    spec = model_spec(name)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    batch = 1 if spec.image_size >= 224 else 4
    with torch.no_grad():
        out = model(torch.randn(batch, 3, spec.image_size, spec.image_size))
    assert out.shape == (batch, spec.num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", ["vit_1gf", "vit_4gf", "vit_18gf", "vit_36gf"])
def test_conv_stem_gives_14x14_tokens_at_224(size):
    spec = model_spec(size, "conv")
    with torch.device("meta"):
        model = build_model(spec)
        grid = model.stem(torch.empty(1, 3, 224, 224))
    assert grid.shape[-2:] == (14, 14) and spec.tokens == 196
    assert grid.shape[1] == VIT_SIZES[size].width


@pytest.mark.parametrize("name", list(PAPER_COMPLEXITY))
def test_paper_presets_match_published_complexity(name):
    gf, params_m = PAPER_COMPLEXITY[name]
    c = count_complexity(model_spec(name))
    # The table rounds to 0.1 GF: allow 2% or the rounding, whichever is larger.
    assert abs(c.flops / 1e9 - gf) <= max(0.02 * gf, 0.05), (name, c.flops / 1e9, gf)
    assert abs(c.params / 1e6 - params_m) <= 0.02 * params_m, (name, c.params / 1e6, params_m)


@pytest.mark.parametrize("size", list(VIT_SIZES))
def test_stem_pairs_within_5_percent_flops_and_conv_has_one_block_fewer(size):
    p, c = model_spec(size, "patchify"), model_spec(size, "conv")
    assert c.depth == p.depth - 1
    fp, fc = count_complexity(p).flops, count_complexity(c).flops
    assert abs(fp - fc) / fp < 0.05, (size, fp, fc)


def test_size_plus_stem_equals_alias():
    assert model_spec("vit_4gf", "conv") == model_spec("vit_c_4gf")
    assert model_spec("vit_4gf") == model_spec("vit_p_4gf")
    with pytest.raises(ValueError, match="fixes stem"):
        model_spec("vit_c_4gf", "patchify")
    with pytest.raises(ValueError, match="allowed"):
        model_spec("vit_9gf")


def test_overrides_and_freeze_stem():
    spec = model_spec("vit_c_tiny", num_classes=7, image_size=64, depth=2)
    model = build_model(spec, freeze_stem=True)
    assert len(model.blocks) == 2 and spec.tokens == 16 * 16
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert all(p.requires_grad for p in model.blocks.parameters())


def test_pycls_init():
    model = build_model(model_spec("vit_p_tiny"))
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.cls_token) == 0
    assert 0.015 < model.pos_embed.std().item() < 0.025


def test_layer_groups_cover_all_params_in_depth_order():
    for name in ("vit_p_tiny", "vit_c_tiny", "regnety_tiny"):
        model = build_model(model_spec(name))
        groups = layer_groups(model)
        names = [g for g, _ in groups]
        assert names[0] == "stem" and names[-1] == "head"
        ids = [id(p) for _, ps in groups for p in ps]
        assert sorted(ids) == sorted(id(p) for p in model.parameters())


def test_regnet_tiny_is_32px():
    assert REGNET_SIZES["regnety_tiny"].image_size == 32
    model = build_model(model_spec("regnety_tiny"))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_models_cli_json_and_table():
    out = run_cli("models", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["name"] for r in rows] == preset_names()
    keys = {"name", "stem", "depth", "width", "heads", "params", "flops", "image_size", "tokens"}
    assert all(set(r) == keys for r in rows)
    by = {r["name"]: r for r in rows}
    assert by["vit_c_4gf"]["depth"] == 11 and by["vit_c_4gf"]["tokens"] == 196
    assert isinstance(by["vit_p_4gf"]["flops"], int)
    table = run_cli("models")
    assert table.returncode == 0 and "vit_c_18gf" in table.stdout and "GFLOPs" in table.stdout


@pytest.mark.parametrize("name", ["vit_c_tiny", "vit_c_1gf"])
def test_conv_stem_init_matches_pycls(name):
    """pycls init_weights_vit: 3x3 convs normal std sqrt(2/out), the last 1x1 normal
    std sqrt(1/out) with a zero bias; BatchNorm at PyTorch's default (weight 1, bias 0)."""
    torch.manual_seed(0)
    stem = build_model(model_spec(name)).stem
    convs = [m for m in stem.layers if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.kernel_size == (3, 3) and c.bias is None for c in convs)
    for conv in convs:
        want = (2.0 / conv.out_channels) ** 0.5
        assert abs(conv.weight.std().item() / want - 1) < 0.1, (conv, conv.weight.std().item(), want)
        assert abs(conv.weight.mean().item()) < 0.1 * want
    want = (1.0 / stem.proj.out_channels) ** 0.5
    assert stem.proj.kernel_size == (1, 1)
    assert abs(stem.proj.weight.std().item() / want - 1) < 0.1
    assert torch.count_nonzero(stem.proj.bias) == 0
    for bn in (m for m in stem.layers if isinstance(m, torch.nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.count_nonzero(bn.bias) == 0


@pytest.mark.parametrize("size", ["vit_tiny", "vit_small", "vit_1gf", "vit_4gf", "vit_18gf", "vit_36gf"])
def test_conv_stem_channels_rise_to_the_width(size):
    """The paper's pattern: 3x3 channels never exceed the width, never fall, and end at it."""
    ch = VIT_SIZES[size].conv_channels
    assert ch[-1] == VIT_SIZES[size].width and max(ch) == ch[-1]
    assert all(a <= b for a, b in zip(ch, ch[1:], strict=False))


def test_regnety_tiny_is_flop_matched_to_the_tiny_vits():
    r = count_complexity(model_spec("regnety_tiny")).flops
    for vit in ("vit_p_tiny", "vit_c_tiny"):
        v = count_complexity(model_spec(vit)).flops
        assert abs(r - v) / v < 0.05, (r, v)


def test_run_ids_change_with_the_architecture_only():
    from stability.config import run_config

    # a patchify run planned before conv-stem revision 1 and the EMA fields keeps its id
    assert run_config({"model": "vit_p_tiny"}).identity().get("arch_rev") is None
    assert "ema_alpha" not in run_config({"model": "vit_p_tiny"}).identity()
    assert run_config({"model": "vit_c_tiny"}).identity()["arch_rev"] == 1
    assert run_config({"model": "regnety_tiny"}).identity()["arch_rev"] == 1
    a, b = run_config({"ema_alpha": 1e-5}), run_config({"ema_alpha": 1e-3})
    assert a.run_id == run_config({}).run_id != b.run_id


def test_saved_preset_counts_equal_counting_now():
    """`stability models` reads FLOPs and params from models/complexity.json: every entry must equal
    a fresh count under the same key (run `python -m stability.models.table` after a model change)."""
    import json

    from stability.models.table import COUNTS, count_presets, model_table

    saved = json.loads(COUNTS.read_text())
    fresh = count_presets()
    assert saved == fresh, "models/complexity.json is stale: run python -m stability.models.table"
    rows = {r["name"]: r for r in model_table()}
    assert {n: (r["params"], r["flops"]) for n, r in rows.items()} == {
        n: (c["params"], c["flops"]) for n, c in fresh.items()}


def test_a_preset_missing_from_the_saved_counts_is_counted(tmp_path, monkeypatch):
    from stability.models import table

    monkeypatch.setattr(table, "COUNTS", tmp_path / "none.json")
    row = next(r for r in table.model_table() if r["name"] == "vit_c_tiny")
    c = count_complexity(model_spec("vit_c_tiny"))
    assert (row["params"], row["flops"]) == (c.params, c.flops)


@pytest.mark.parametrize("size", list(VIT_SIZES))
def test_image_size_must_be_a_multiple_of_the_patch_size(size):
    """At an image_size that is not a multiple of the patch size the patchify stem drops the
    border while the conv stem pads and sees it (vit_tiny at 30 px: 49 vs 64 tokens): a config
    refused in one line naming image_size, the patch size and the nearest allowed sizes. At the
    allowed sizes, the preset's own included, both stems see the same token grid."""
    from stability.config import run_config
    from stability.errors import ConfigError

    p = VIT_SIZES[size].patch_size
    for px in (VIT_SIZES[size].image_size, 2 * p, 7 * p):
        run_config({"model": size, "dataset": "synthetic", "image_size": px})
        assert model_spec(size, "patchify", image_size=px).tokens == model_spec(size, "conv", image_size=px).tokens
    for stem in ("patchify", "conv"):
        with pytest.raises(ConfigError) as e:
            run_config({"model": size, "stem": stem, "dataset": "synthetic", "image_size": 7 * p + 2})
        line = str(e.value)
        assert line.startswith(f"image_size: {7 * p + 2} is not allowed ({size} has patch size {p}: "), line
        assert line.endswith(f"nearest: {7 * p} or {8 * p})"), line
    run_config({"model": "regnety_tiny", "image_size": 30})  # no patches: any size
