"""How the step executes: torch.compile (auto per device, mode), the optimizer's implementation
(fused | foreach | loop), their validation, and that none of them enters the run id."""

import pytest
import torch
from torch import nn

from stability.config import RunConfig, resolve_compile, run_config
from stability.errors import ConfigError
from stability.trainer import execution, optim
from stability.trainer.execution import compile_net, execution_columns
from stability.trainer.optim import impl_of, keep_impl, make_optimizer, resolve_impl
from stability.yamlio import parse_overrides

from .conftest import TINY


@pytest.mark.parametrize(("setting", "device", "want"), [
    ("auto", "cuda", True), ("auto", "cpu", False), (True, "cpu", True), (False, "cuda", False)])
def test_compile_auto_is_on_for_cuda_only(setting, device, want):
    assert resolve_compile(setting, device) is want


@pytest.mark.parametrize(("impl", "device", "want"), [
    ("auto", "cuda", "fused"), ("auto", "cpu", "foreach"), ("loop", "cuda", "loop"), ("fused", "cpu", "fused")])
def test_optimizer_impl_auto_is_fused_on_cuda_foreach_elsewhere(impl, device, want):
    assert resolve_impl(impl, device) == want


def test_yaml_booleans_and_auto_are_accepted_for_compile():
    assert RunConfig().compile == "auto"
    for text, want in (("compile=true", True), ("compile=false", False), ("compile=auto", "auto")):
        assert run_config(parse_overrides([text])).compile == want


@pytest.mark.parametrize(("field", "value", "allowed"), [
    ("compile", "yes", "auto, true, false"), ("compile", 1, "bool or str"),
    ("compile_mode", "fast", "default, reduce-overhead, max-autotune"),
    ("optimizer_impl", "fast", "auto, fused, foreach, loop")])
def test_a_bad_execution_setting_names_the_field_and_what_is_allowed(field, value, allowed):
    with pytest.raises(ConfigError) as e:
        run_config({field: value}, "run.yaml")
    assert str(e.value).count("\n") == 0 and field in str(e.value) and allowed in str(e.value)


def test_execution_settings_leave_the_run_id_alone():
    base = run_config(dict(TINY))
    for change in ({"compile": True}, {"compile": False}, {"compile_mode": "max-autotune"},
                   {"optimizer_impl": "loop"}, {"optimizer_impl": "fused"}):
        assert run_config({**TINY, **change}).run_id == base.run_id, change
    assert RunConfig().run_id == "c5ad45169a7f"  # as before the fields existed (tests/test_recipe.py)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
@pytest.mark.parametrize("impl", ["foreach", "loop", "fused"])
def test_the_optimizer_runs_the_chosen_implementation(name, impl):
    """``fused`` on a CPU too: torch (>= 2.4, the floor in pyproject) has CPU kernels for both."""
    opt = make_optimizer(run_config({"optimizer": name, "optimizer_impl": impl}), nn.Linear(4, 4), "cpu")
    assert opt.defaults["fused"] is (impl == "fused") and opt.defaults["foreach"] is (impl == "foreach")
    assert impl_of(opt) == impl
    assert impl_of(make_optimizer(run_config({"optimizer": name}), nn.Linear(4, 4))) == "foreach"  # auto on CPU


def test_an_unsupported_fused_optimizer_is_a_clear_error(monkeypatch):
    def refuse(*_, **__):
        raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")

    monkeypatch.setattr(torch.optim, "AdamW", refuse)
    with pytest.raises(ConfigError, match=r"optimizer_impl: fused is not supported by torch .* adamw on cpu"):
        make_optimizer(run_config({"optimizer_impl": "fused"}), nn.Linear(4, 4), "cpu")


def _steps(opt: torch.optim.Optimizer, model: nn.Module, n: int) -> None:
    torch.manual_seed(1)
    for _ in range(n):
        model(torch.randn(8, 4)).square().mean().backward()
        opt.step()
        opt.zero_grad()


def test_implementations_agree_and_a_checkpoint_keeps_the_chosen_one():
    """The three give the same weights up to float rounding; loading a state dict written under
    another implementation keeps this optimizer's (and its step counts where that one wants them)."""
    weights = {}
    for impl in ("loop", "foreach", "fused"):
        torch.manual_seed(0)
        model = nn.Linear(4, 4)
        opt = make_optimizer(run_config({"optimizer_impl": impl}), model, "cpu")
        _steps(opt, model, 3)
        weights[impl] = model.weight.detach().clone()
        saved = opt.state_dict()
    for impl in ("loop", "foreach"):
        torch.testing.assert_close(weights[impl], weights["fused"], rtol=1e-5, atol=1e-6)
    model = nn.Linear(4, 4)
    opt = make_optimizer(run_config({"optimizer_impl": "foreach"}), model, "cpu")
    keep_impl(opt, lambda: opt.load_state_dict(saved))  # written by the fused one
    assert impl_of(opt) == "foreach" and all(not g["fused"] for g in opt.param_groups)
    _steps(opt, model, 1)  # and it steps


def test_compile_net_asks_for_static_shapes_and_passes_the_mode_only_when_it_is_not_the_default(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda net, **kw: calls.append(kw) or net)
    net = nn.Linear(2, 2)
    assert compile_net(net, "default") is net and compile_net(net, "reduce-overhead") is net
    assert calls == [{"dynamic": False}, {"dynamic": False, "mode": "reduce-overhead"}]


def test_a_compiled_model_is_evaluated_at_one_batch_shape_with_the_same_errors():
    """A compiled net's partial last batches (validation, test split) are padded to the one
    evaluation batch size (no graph for another size); the errors are the uncompiled net's."""
    from contextlib import nullcontext

    from torch._dynamo import reset

    from stability.data.datasets import load_dataset
    from stability.trainer.evaluation import evaluate

    cfg = run_config({**TINY, "batch_size": 20})
    data = load_dataset("digits", seed=0, test_split=250)
    test = data.split("test")
    sizes = {len(data.val) % (2 * cfg.batch_size), len(test.val) % (2 * cfg.batch_size)}
    assert 0 not in sizes and len(sizes) == 2, "each split must end in a partial batch of its own size"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * data.image_size ** 2, 32), nn.GELU(),
                          nn.Linear(32, data.num_classes))
    shapes = []

    def backend(gm, inputs):  # each compiled graph, with the input shapes it was compiled for
        shapes.append([tuple(t.shape) for t in inputs if isinstance(t, torch.Tensor)])
        return gm.forward

    reset()
    net = torch.compile(model, backend=backend, dynamic=False)
    assert execution.is_compiled(net) and not execution.is_compiled(model)
    for split in (data, test):
        got = evaluate(net, split, cfg, torch.device("cpu"), nullcontext, per_image=True)
        want = evaluate(model, split, cfg, torch.device("cpu"), nullcontext, per_image=True)
        assert (got.top1, got.top5) == (want.top1, want.top5) and (got.correct == want.correct).all()
        assert got.loss == pytest.approx(want.loss, rel=1e-6)
    assert len(shapes) == 1 and (2 * cfg.batch_size, 3, data.image_size, data.image_size) in shapes[0], shapes
    reset()


def test_the_runs_row_columns_say_what_ran():
    opt = optim.make_optimizer(RunConfig(), nn.Linear(2, 2), "cpu")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert execution_columns(False, "default", opt, torch.device("cpu")) == {
            "compiled": False, "compile_mode": None, "optimizer_impl": "foreach", "amp_dtype": None, "threads": 1}
    finally:
        torch.set_num_threads(before)
    cols = execution.execution_columns(True, "max-autotune", opt, torch.device("cuda", 0))
    assert cols["compile_mode"] == "max-autotune" and cols["amp_dtype"] == "bfloat16"
