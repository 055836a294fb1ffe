"""The instability signals of later work and their fixes, checked against direct computations:
attention logits and entropy (the probe), qk-layernorm, the z-loss, log Z, grad/update RMS, the
loss at initialisation (Wortsman et al. 2023, arXiv 2309.14322)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from stability import store
from stability.config import run_config
from stability.models import build_model, model_spec
from stability.models.vit import Attention
from stability.trainer.tracing import GradTracer
from stability.trainer.train import Step, train, train_step

from .conftest import TINY


def _vit(qk_norm=False, seed=0):
    torch.manual_seed(seed)
    return build_model(model_spec("vit_p_tiny", num_classes=10, image_size=32), qk_norm=qk_norm)


def _qk(attn: Attention, x: torch.Tensor):
    b, n, d = x.shape
    q, k, v = attn.qkv(x).view(b, n, 3, attn.heads, d // attn.heads).permute(2, 0, 3, 1, 4)
    return attn.q_norm(q), attn.k_norm(k), v


def test_the_probe_equals_a_direct_computation_from_q_and_k():
    model = _vit()
    with torch.no_grad():  # a trained-looking model: the head and the in-projections scaled up
        for b in model.blocks:
            b.attn.qkv.weight.mul_(3)
    inputs = {}
    hooks = [b.attn.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0]))
             for i, b in enumerate(model.blocks)]
    tracer = GradTracer(model, torch.device("cpu"))
    tracer.probe(True)
    model(torch.randn(4, 3, 32, 32))
    got = tracer.attention()
    tracer.probe(False)
    for h in hooks:
        h.remove()
    rows = {name: i for i, (name, _) in enumerate(tracer.layers)}
    for i, b in enumerate(model.blocks):
        q, k, _ = _qk(b.attn, inputs[i])
        z = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        p = z.softmax(-1)
        entropy = -(p * p.log()).sum(-1).mean()
        assert got[rows[f"blocks.{i}"]].tolist() == pytest.approx([z.max().item(), entropy.item()], rel=1e-4)
    assert torch.isnan(got[rows["stem"]]).all() and torch.isnan(got[rows["head"]]).all()
    assert all(b.attn.probe is False for b in model.blocks)


def test_qk_layernorm_normalises_each_heads_queries_and_keys_and_bounds_the_logits():
    model = _vit(qk_norm=True)
    attn = model.blocks[0].attn
    x = torch.randn(2, 17, attn.qkv.in_features) * 10
    q, k, v = _qk(attn, x)
    assert q.mean(-1).abs().max() < 1e-4 and (q.var(-1, unbiased=False) - 1).abs().max() < 1e-2  # per head
    want = attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(x.shape))
    torch.testing.assert_close(attn(x), want)
    plain = _vit(qk_norm=False).blocks[0].attn
    plain.load_state_dict({k_: v_ for k_, v_ in attn.state_dict().items() if "_norm" not in k_})
    assert not torch.allclose(plain(x), attn(x))  # the norm changes the computation
    attn.probe = True
    attn(x)
    assert attn.probed[0] <= math.sqrt(q.shape[-1]) + 1e-3  # |q.k| <= d_h for unit-variance rows


def _step(z_loss: float, model):
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    return Step(model, opt, GradTracer(model, torch.device("cpu")), z_loss=z_loss)


def test_z_loss_adds_coef_times_log_z_squared_and_log_z_is_recorded():
    torch.manual_seed(1)
    model = _vit()
    with torch.no_grad():
        model.head.weight.normal_(std=0.5)  # non-zero logits, so log Z varies
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    c = 0.25
    manual = copy.deepcopy(model)
    logits = manual(x)
    lse = logits.logsumexp(-1)
    (F.cross_entropy(logits, y) + c * lse.square().mean()).backward()
    want = {n: p.detach() - p.grad for n, p in manual.named_parameters()}  # SGD, lr 1
    out = train_step(_step(c, model), x, y, lr=1.0)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), want[n], rtol=1e-4, atol=1e-6)
    assert out.loss.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)  # recorded: CE
    assert out.log_z.item() == pytest.approx(lse.mean().item(), rel=1e-5)
    plain = copy.deepcopy(manual)
    plain.zero_grad()
    train_step(_step(0.0, plain), x, y, lr=1.0)
    assert any(not torch.allclose(a, b) for a, b in zip(plain.parameters(), model.parameters(), strict=True))


@pytest.fixture(scope="module")
def signals_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    cfg = run_config({**TINY, "model": "vit_p_tiny", "qk_norm": True, "z_loss": 1e-4, "results": str(root),
                      "sweep": "sig"})
    train(cfg)
    return cfg, store.load(root)


def test_a_run_records_the_new_signals(signals_run):
    cfg, res = signals_run
    run = res.runs.iloc[0]
    assert run.status == "completed" and run.init_val_loss == pytest.approx(math.log(10), rel=1e-6)  # zero head
    assert 0 <= run.init_top1_err <= 100 and math.isfinite(run.final_val_loss)
    assert res.epochs.val_loss.notna().all() and run.final_val_loss == res.epochs.sort_values("epoch").val_loss.iloc[-1]
    assert res.steps.log_z.notna().all() and res.steps.log_z.iloc[0] == pytest.approx(math.log(10), rel=1e-5)
    g = res.grad_norms
    blocks = g[g.layer.str.startswith("blocks.")]
    assert blocks.attn_logit_max.notna().all() and blocks.attn_entropy.between(0, math.log(65)).all()
    assert g[~g.layer.str.startswith("blocks.")].attn_logit_max.isna().all()
    model = build_model(model_spec("vit_p_tiny", num_classes=10, image_size=32), qk_norm=True)
    numel = {name: sum(p.numel() for p in ps) for name, ps in model.layer_groups()}
    for r in g.itertuples():
        assert r.grad_rms == pytest.approx(r.grad_norm / math.sqrt(numel[r.layer]), rel=1e-9)
        assert r.update_rms == pytest.approx(r.update_ratio * r.param_norm / math.sqrt(numel[r.layer]), rel=1e-6)


def test_attention_tracing_can_be_switched_off_and_no_new_field_changes_old_ids(tmp_path):
    base = run_config({**TINY, "results": str(tmp_path), "sweep": "off"})
    off = run_config({**TINY, "results": str(tmp_path), "sweep": "off", "trace_attention": False, "steps_per_epoch": 2,
                      "epochs": 1})
    assert run_config({**TINY, "qk_norm": False, "z_loss": 0.0, "adam_eps": 1e-8}).run_id == base.run_id
    assert len({base.run_id, run_config({**TINY, "qk_norm": True}).run_id, run_config({**TINY, "z_loss": 1e-4}).run_id,
                run_config({**TINY, "adam_eps": 1e-6}).run_id}) == 4
    assert run_config({**TINY, "trace_attention": False}).run_id == base.run_id  # what is measured, not computed
    train(off)
    g = store.load(tmp_path).grad_norms
    assert len(g) and g.attn_logit_max.isna().all() and g.grad_rms.notna().all()


def test_bad_values_of_the_fixes_are_one_line_errors():
    from stability.errors import ConfigError

    for bad, field in (({"z_loss": -1}, "z_loss"), ({"adam_eps": 0}, "adam_eps"), ({"qk_norm": "maybe"}, "qk_norm")):
        with pytest.raises(ConfigError, match=field):
            run_config({**TINY, **bad})


def test_update_norms_equal_the_parameter_change_on_every_trace_step():
    """The snapshot buffers are reused from one trace step to the next: each step's update norms
    are still that step's own change (per layer: sqrt of the summed squared changes)."""
    model = _vit()
    tracer = GradTracer(model, torch.device("cpu"), attention=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    rows = {name: i for i, (name, _) in enumerate(tracer.layers)}
    for _ in range(3):
        before = [p.detach().clone() for p in tracer.params]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        tracer.before_step()
        opt.step()
        params, updates = tracer.after_step()
        d_sq, p_sq = torch.zeros(tracer.n_layers), torch.zeros(tracer.n_layers)
        for i, p, b in zip(tracer.index.tolist(), tracer.params, before, strict=True):
            d_sq[i] += (p.detach() - b).square().sum()
            p_sq[i] += p.detach().square().sum()
        assert torch.allclose(updates, d_sq.sqrt(), rtol=1e-5, atol=1e-8)
        assert torch.allclose(params, p_sq.sqrt(), rtol=1e-5)
        assert updates[rows["head"]] > 0
