"""The held-out test split (``test_split``), per-image correctness, and pycls' precise BN for the EMA."""

from collections import Counter
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stability import store
from stability.analysis.stats import correct_of, mcnemar_runs
from stability.config import run_config
from stability.data.datasets import load_dataset
from stability.errors import ConfigError
from stability.trainer.evaluation import precise_bn
from stability.trainer.train import train


def test_test_split_is_fixed_disjoint_and_taken_from_training():
    full, a, b = load_dataset("digits"), load_dataset("digits", test_split=300), load_dataset("digits", test_split=300)
    assert (len(a.train), len(a.val), len(a.test)) == (1197, 300, 300)
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])  # the same split for every run
    assert torch.equal(a.val.tensors[0], full.val.tensors[0])  # validation untouched
    def images(ds):
        return Counter(x.numpy().tobytes() for x in ds.tensors[0])

    # the held-out and kept images are exactly the former training images, each used once
    assert images(a.test) + images(a.train) == images(full.train)
    assert sorted(a.test.tensors[1].unique().tolist()) == list(range(10))


def test_test_split_refused_where_it_cannot_be_held_out():
    with pytest.raises(ConfigError, match="test_split"):
        run_config({"dataset": "cifar10", "data_root": "/x", "test_split": 100})
    with pytest.raises(ConfigError, match="test_split"):
        run_config({"test_split": -1})
    # left out of the run id while 0, so every run planned before it existed keeps its id
    assert run_config({}).run_id == run_config({"test_split": 0}).run_id != run_config({"test_split": 300}).run_id


def test_a_run_records_its_test_errors_and_which_images_it_got_right(tmp_path):
    items = dict(model="vit_c_tiny", epochs=1, steps_per_epoch=4, batch_size=32, test_split=300,
                 ema_alpha=8.5e-3, ema_period=2, image_size=16, results=str(tmp_path))
    train(run_config(items))
    train(run_config({**items, "seed": 1}))
    runs = store.read_table(tmp_path, "runs").sort_values("seed")
    assert (runs.test_images == 300).all()
    for _, r in runs.iterrows():
        for prefix in ("test", "test_ema"):
            right = correct_of(r[f"{prefix}_correct"], 300)
            assert 100 * (1 - right.mean()) == pytest.approx(r[f"{prefix}_top1_err"])
    m = mcnemar_runs(runs.iloc[0], runs.iloc[1])
    a, b = (correct_of(r.test_correct, 300) for _, r in runs.iterrows())
    assert (m.only_a, m.only_b) == (int((a & ~b).sum()), int((b & ~a).sum())) and 0 < m.p <= 1
    # duckdb reads the bytes as a blob
    import duckdb

    got = duckdb.sql(f"select octet_length(test_correct) from read_parquet('{tmp_path}/runs/*/*.parquet')").fetchall()
    assert got == [(38,), (38,)]
    with pytest.raises(ValueError, match="bytes"):
        correct_of(b"\x00", 300)


def test_precise_bn_replaces_running_stats_by_the_average_of_batch_stats():
    cfg = run_config({"batch_size": 16})
    data = load_dataset("digits", test_split=300)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten())
    net.eval()
    used = precise_bn(net, data, cfg, torch.device("cpu"), nullcontext, samples=64)
    assert used == 2 and not net.training  # two eval batches of 32; the mode is given back
    x = data.train.tensors[0]
    feats = [net[0](x[i:i + 32]) for i in (0, 32)]
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) + f.mean((0, 2, 3)) ** 2 for f in feats]).mean(0) - mean ** 2
    assert torch.allclose(net[1].running_mean, mean, atol=1e-5)
    assert torch.allclose(net[1].running_var, var, atol=1e-4)
    assert net[1].momentum == 0.1
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert precise_bn(plain, data, cfg, torch.device("cpu"), nullcontext) == 0
    assert np.isfinite(net[1].running_var.numpy()).all()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=700))
def test_stored_correctness_reads_back_exactly(bits):
    from stability.trainer.evaluation import pack_correct

    packed = pack_correct(np.array(bits))
    assert correct_of(packed, len(bits)).tolist() == bits
    with pytest.raises(ValueError):
        correct_of(packed, len(bits) + 8)  # too few bytes for the count: named, never a wrong read


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(-6, 6), min_size=1, max_size=8), st.sampled_from(["greater", "less", "two-sided"]))
def test_sign_flip_p_equals_brute_force(d, alternative):
    from itertools import product

    from stability.analysis.stats import sign_flip_p

    d = np.array(d, float) / 3  # errors on the 1/3-point grid: ties and zeros are common
    means = [np.dot(s, d) / len(d) for s in product((1, -1), repeat=len(d))]
    obs = d.mean()
    hit = {"greater": lambda m: m >= obs - 1e-12, "less": lambda m: m <= obs + 1e-12,
           "two-sided": lambda m: abs(m) >= abs(obs) - 1e-12}[alternative]
    assert sign_flip_p(d, alternative) == pytest.approx(sum(map(hit, means)) / len(means))
