"""DP randomness: sampling and noise come from the CSPRNG under the whole key, never from torch."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path

import numpy as np
import pytest
import torch

from datasite.datagen import generate_so100
from datasite.training.dataset import validate_dataset
from datasite.training.dp import dp_streams, noisy_clipped_gradient, sample_frames, unit_sampler
from datasite.training.recipes import build_policy
from datasite.training.trainer import LocalPlan, train_local
from datasite.training.weights import trainable_state
from privacy.csprng import Csprng

EPISODES = 4
ACT = {"dim_model": 32, "dim_feedforward": 64, "n_vae_encoder_layers": 1}
KEY = bytes(range(32))
# equal to KEY in the first 4 and 8 bytes: a 32- or 64-bit seed derived from either is the same
SAME_PREFIX = KEY[:8] + bytes([KEY[8] ^ 1]) + KEY[9:]
LAST_BIT = KEY[:-1] + bytes([KEY[-1] ^ 1])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    root = generate_so100(
        tmp_path_factory.mktemp("dprand") / "ds",
        episodes=EPISODES,
        contributors=2,
        seed=0,
        image_size=(32, 40),
        frames_per_episode=16,
    )
    return root, validate_dataset(root)


def _noise_only(key: bytes, shapes: dict[str, tuple[int, ...]], std: float = 2.0) -> dict:
    """The noisy gradient of an empty step: std·N(0, 1) per coordinate, nothing else."""
    params = {n: torch.zeros(s, requires_grad=True) for n, s in shapes.items()}
    return noisy_clipped_gradient(
        torch.nn.Module(),
        params,
        [],
        lambda _m, _b: torch.zeros(()),
        clip_norm=1.0,
        noise_multiplier=std,
        expected_units=1.0,
        noise=dp_streams(key).noise,
    )


SHAPES = {"w": (3, 5), "b": (7,), "scalar": ()}


def test_the_noise_is_the_csprng_stream_of_the_key():
    out = _noise_only(KEY, SHAPES)
    stream = Csprng(KEY).stream("dp.noise")  # independent of dp_streams: the documented label
    for name, shape in SHAPES.items():
        expect = 2.0 * torch.from_numpy(stream.standard_normal(int(np.prod(shape)), np.float32))
        assert torch.equal(out[name], expect.view(shape)), name
        assert out[name].dtype == torch.float32
    double = {n: torch.zeros(3, dtype=torch.float64, requires_grad=True) for n in ("x",)}
    got = noisy_clipped_gradient(
        torch.nn.Module(), double, [], lambda *_: None, clip_norm=1.0, noise_multiplier=1.0,
        expected_units=1.0, noise=dp_streams(KEY).noise,
    )  # fmt: skip
    assert got["x"].dtype == torch.float64
    assert torch.equal(got["x"], torch.from_numpy(Csprng(KEY).stream("dp.noise").standard_normal(3)))


def test_torchs_generator_has_no_say_in_the_noise(monkeypatch):
    torch.manual_seed(1)
    a = _noise_only(KEY, SHAPES)

    def refuse(*args, **kwargs):
        raise AssertionError("DP noise drawn from torch's generator")

    monkeypatch.setattr(torch, "randn", refuse)
    monkeypatch.setattr(torch, "normal", refuse)
    torch.manual_seed(2)
    b = _noise_only(KEY, SHAPES)
    assert all(torch.equal(a[n], b[n]) for n in SHAPES)


@pytest.mark.adversarial
@pytest.mark.parametrize("other", [SAME_PREFIX, LAST_BIT], ids=["same-first-8-bytes", "last-bit"])
def test_a_seed_search_over_a_key_prefix_does_not_find_the_noise_or_the_samples(other):
    """Whoever searched 2³² or 2⁶⁴ seeds would find a key with the right prefix, not the key:
    draws under a key differing in one later bit share nothing with the real draws."""
    a, b = _noise_only(KEY, SHAPES), _noise_only(other, SHAPES)
    for n in SHAPES:
        assert not torch.equal(a[n], b[n])
    diff = torch.cat([(a[n] - b[n]).flatten() for n in SHAPES])
    assert float(diff.std()) > 1.0  # unrelated draws: difference of two independent N(0, 4)
    mine, theirs = dp_streams(KEY), dp_streams(other)
    assert list(unit_sampler(64, 0.5, 4, mine.units)) != list(unit_sampler(64, 0.5, 4, theirs.units))
    rows = list(range(100, 200))
    assert [sample_frames(rows, 4, mine.frames) for _ in range(4)] != [
        sample_frames(rows, 4, theirs.frames) for _ in range(4)
    ]


def test_sampling_is_poisson_and_frames_are_distinct_and_reproducible():
    steps = list(unit_sampler(10, 0.3, 2000, dp_streams(KEY).units))
    sizes = np.array([len(s) for s in steps])
    assert abs(sizes.mean() - 3.0) < 0.15 and (sizes == 0).any()
    assert all(s == sorted(set(s)) and all(0 <= i < 10 for i in s) for s in steps)
    assert steps == list(unit_sampler(10, 0.3, 2000, dp_streams(KEY).units))
    frames = dp_streams(KEY).frames
    picked = sample_frames([5, 6, 7, 8, 9], 4, frames)
    assert len(set(picked)) == 4 and set(picked) <= {5, 6, 7, 8, 9}
    assert set(sample_frames([5, 6], 4, frames)) <= {5, 6}  # shorter episode: with replacement
    with pytest.raises(ValueError, match=r"sample_rate must be in \(0, 1\]"):
        next(unit_sampler(10, 0.0, 1, frames))


def _plan(**kw) -> LocalPlan:
    base = {
        "local_steps": 3,
        "batch_size": 2,
        "dp": True,
        "noise_multiplier": 1.0,
        "clip_norm": 0.5,
        "frames_per_episode": 2,
        "dp_mode": "loop",
        "optimizer": "sgd",
        "lr": 1.0,
        "eval_frames": 2,
    }
    return LocalPlan(**(base | kw))


def _train(dataset, plan: LocalPlan):
    root, summary = dataset
    eps = list(range(EPISODES))
    return train_local(None, "act-small", ACT, root, eps, plan, summary.stats, progress=False)


def test_the_trainers_noise_is_the_keys_stream_and_depends_on_every_key_bit(dataset):
    """Empty steps, SGD with lr 1: the update is −σC/(qN)·Σ_t z_t, z_t the key's normals."""
    summary = dataset[1]
    q = 1e-9
    plan = _plan(sample_rate=q, dp_seed=KEY)
    res = _train(dataset, plan)
    assert res.metrics["units_sampled"] == 0 and res.metrics["empty_steps"] == 3
    policy = build_policy("act-small", ACT, summary.features, summary.stats, "cpu").policy
    start = trainable_state(policy)
    order = [n for n, _ in policy.named_parameters() if n in start]  # the trainer's noise order
    stream = Csprng(KEY).stream("dp.noise")
    total = {n: torch.zeros_like(start[n]) for n in order}
    for _ in range(plan.local_steps):
        for n in order:
            z = stream.standard_normal(start[n].numel(), np.float32)
            total[n] += torch.from_numpy(z).view(start[n].shape)
    scale = plan.noise_multiplier * plan.clip_norm / (q * EPISODES)
    for n in order:
        assert torch.allclose(res.update[n], -scale * total[n], rtol=1e-4, atol=scale * 1e-5), n
    again = _train(dataset, plan)  # a retried round with the same key repeats its noise
    assert all(torch.equal(res.update[n], again.update[n]) for n in order)
    for other in (SAME_PREFIX, LAST_BIT):
        moved = _train(dataset, _plan(sample_rate=q, dp_seed=other))
        assert all(not torch.equal(res.update[n], moved.update[n]) for n in order)


def test_sampling_in_the_trainer_follows_the_key_and_production_keys_are_fresh(dataset):
    a, b = _train(dataset, _plan(dp_seed=KEY)), _train(dataset, _plan(dp_seed=KEY))
    assert a.metrics["units_sampled"] == b.metrics["units_sampled"]
    assert all(torch.equal(a.update[n], b.update[n]) for n in a.update)
    fresh = [_train(dataset, _plan(sample_rate=1e-9)) for _ in range(2)]  # dp_seed None: OS entropy
    name = next(iter(fresh[0].update))
    assert not torch.equal(fresh[0].update[name], fresh[1].update[name])
