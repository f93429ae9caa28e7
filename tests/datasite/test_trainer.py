"""Local trainer: learning, determinism, FedProx, episode-level DP-SGD and consent exclusion."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from datasite.datagen import generate_so100
from datasite.training.dataset import validate_dataset
from datasite.training.dp import dp_streams, noisy_clipped_gradient
from datasite.training.recipes import build_policy
from datasite.training.trainer import LocalPlan, evaluate, train_local
from datasite.training.weights import manifest, trainable_state
from privacy.accounting import Mechanism

EPISODES = 8
KEY = bytes(range(32))  # a fixed DP key: reproducible tests (production draws 32 secret bytes)
# small ACT: fast on 2 CPU cores, same code path as the default act-small
ACT = {"dim_model": 64, "dim_feedforward": 128, "n_vae_encoder_layers": 1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    root = generate_so100(
        tmp_path_factory.mktemp("so100") / "ds",
        episodes=EPISODES,
        contributors=4,
        seed=0,
        image_size=(32, 40),
        frames_per_episode=16,
    )
    return root, validate_dataset(root).stats


def _train(dataset, plan: LocalPlan, episodes=None, config=None, **kw):
    root, stats = dataset
    eps = list(range(EPISODES)) if episodes is None else episodes
    cfg = ACT if config is None else config
    return train_local(None, "act-small", cfg, root, eps, plan, stats, progress=False, **kw)


def _dist(a: dict, b: dict) -> float:
    return sum(float((a[n] - b[n]).pow(2).sum()) for n in a) ** 0.5


def test_default_act_small_30_steps_reduce_loss(dataset):
    plan = LocalPlan(local_steps=30, batch_size=4, lr=1e-4, seed=0)
    res = _train(dataset, plan, config={})
    m = res.metrics
    assert m["steps"] == 30 and m["frames_used"] == 120 and m["episodes_used"] == EPISODES
    assert m["loss_after"] < 0.9 * m["loss_before"], m
    assert res.mechanism is None
    assert list(res.update) == sorted(res.update)
    assert res.manifest == manifest(res.update)


def test_same_seed_same_update_other_seed_differs(dataset):
    plan = LocalPlan(local_steps=3, batch_size=4, seed=11)
    a, b = _train(dataset, plan), _train(dataset, plan)
    assert all(torch.equal(a.update[n], b.update[n]) for n in a.update)
    assert a.metrics["loss_after"] == b.metrics["loss_after"]
    c = _train(dataset, replace(plan, seed=12))
    assert _dist(a.update, c.update) > 0


def test_global_weights_are_the_starting_point(dataset):
    root, stats = dataset
    plan = LocalPlan(local_steps=2, batch_size=4)
    first = _train(dataset, plan)
    init = trainable_state(build_policy("act-small", ACT, _features(root), stats, "cpu").policy)
    round1 = {n: init[n] + first.update[n] for n in init}
    res = train_local(round1, "act-small", ACT, root, [0, 1], plan, stats, progress=False)
    assert res.manifest == manifest(init)
    bad = dict(round1)
    name = next(iter(bad))
    bad[name] = torch.full_like(bad[name], float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        train_local(bad, "act-small", ACT, root, [0, 1], plan, stats, progress=False)


def test_evaluate_matches_the_trainers_eval_loss(dataset):
    root, stats = dataset
    init = trainable_state(build_policy("act-small", ACT, _features(root), stats, "cpu").policy)
    plan = LocalPlan(local_steps=2, batch_size=4, seed=5, eval_frames=12)
    res = train_local(None, "act-small", ACT, root, [2, 3], plan, stats, progress=False)
    trained = {n: init[n] + res.update[n] for n in init}
    loss = evaluate(trained, "act-small", ACT, root, [2, 3], stats, frames=12, seed=5)
    assert loss == pytest.approx(res.metrics["loss_after"], rel=1e-4)
    assert evaluate(init, "act-small", ACT, root, [2, 3], stats, frames=12, seed=5) == (
        pytest.approx(res.metrics["loss_before"], rel=1e-6)
    )


def test_fedprox_keeps_weights_closer_to_global(dataset):
    plan = LocalPlan(local_steps=6, batch_size=4, lr=1e-3, seed=3)
    fedavg = _train(dataset, plan)
    fedprox = _train(dataset, replace(plan, mu=1.0))
    assert fedprox.metrics["update_norm"] < fedavg.metrics["update_norm"]
    assert fedprox.metrics["mu"] == 1.0


def _dp_plan(**kw) -> LocalPlan:
    base = {
        "local_steps": 3,
        "batch_size": 2,
        "dp": True,
        "noise_multiplier": 1.0,
        "clip_norm": 0.5,
        "frames_per_episode": 3,
        "dp_seed": KEY,
        "dp_mode": "loop",
    }
    return LocalPlan(**(base | kw))


def test_dp_mechanism_matches_plan(dataset):
    res = _train(dataset, _dp_plan(local_steps=4))
    q = 2 / EPISODES  # expected episodes per step / allowed episodes
    assert res.mechanism == Mechanism(noise_multiplier=1.0, sample_rate=q, steps=4, unit="episode")
    m = res.metrics
    assert m["privacy_unit"] == "episode" and m["frames_per_unit"] == 3
    assert m["frames_used"] == 3 * m["units_sampled"]
    explicit = _train(dataset, _dp_plan(sample_rate=0.5), episodes=[0, 1, 2, 3])
    assert explicit.mechanism == Mechanism(1.0, 0.5, 3, "episode")


def test_dp_noise_same_seed_same_result_other_seed_differs(dataset):
    a, b = _train(dataset, _dp_plan()), _train(dataset, _dp_plan())
    assert all(torch.equal(a.update[n], b.update[n]) for n in a.update)
    c = _train(dataset, _dp_plan(dp_seed=bytes(32)))
    assert _dist(a.update, c.update) > 0


def test_dp_noise_on_empty_steps(dataset):
    """With (almost) no episode sampled, the update is pure noise, and not zero."""
    res = _train(dataset, _dp_plan(sample_rate=1e-9, optimizer="sgd", lr=1.0))
    assert res.metrics["units_sampled"] == 0 and res.metrics["empty_steps"] == 3
    assert res.metrics["frames_used"] == 0
    # SGD, lr 1: update = -Σ noise/(qN); each coordinate has std σC/(qN) per step
    std = 1.0 * 0.5 / (1e-9 * EPISODES) * 3**0.5
    flat = torch.cat([t.flatten() for t in res.update.values()])
    assert 0.8 * std < float(flat.std()) < 1.2 * std


@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_dp_clip_bound_holds_per_episode(dataset, mode):
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    plan = _dp_plan(local_steps=2, batch_size=4, dp_mode=mode, clip_norm=0.5)
    _train(dataset, plan, norm_hook=lambda pre, post: seen.append((pre, post)))
    pre = torch.cat([p for p, _ in seen])
    post = torch.cat([q for _, q in seen])
    assert len(post) > 0 and len(seen) == 2
    assert bool((post <= 0.5 + 1e-5).all()), post
    assert bool((pre > 0.5).any())  # clipping was active
    small = pre <= 0.5
    assert torch.allclose(post[small], pre[small], rtol=1e-4)


def test_loop_and_vmap_agree(dataset):
    cfg = ACT | {"dropout": 0.0, "use_vae": False}
    runs: dict[str, list] = {"loop": [], "vmap": []}
    for mode, got in runs.items():
        _train(dataset, _dp_plan(dp_mode=mode), config=cfg, norm_hook=lambda a, _b, g=got: g.append(a))
    runs = {mode: torch.cat(got) for mode, got in runs.items()}
    assert torch.allclose(runs["loop"], runs["vmap"], rtol=1e-3)


def test_frame_level_dp_is_labelled_weaker(dataset):
    res = _train(dataset, _dp_plan(unit="frame", batch_size=4))
    assert res.mechanism.unit == "frame"
    assert res.mechanism.sample_rate == pytest.approx(4 / (16 * EPISODES))
    assert "weaker" in res.metrics["privacy_note"]
    assert res.metrics["frames_per_unit"] == 1


def test_withdrawn_episodes_are_never_read(dataset, monkeypatch):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    read: list[int] = []
    original = LeRobotDataset.__getitem__

    def spy(self, idx):
        item = original(self, idx)
        read.append(int(item["episode_index"]))
        return item

    monkeypatch.setattr(LeRobotDataset, "__getitem__", spy)
    allowed = [1, 4, 6]
    plain = _train(dataset, LocalPlan(local_steps=3, batch_size=6), episodes=allowed)
    dp = _train(dataset, _dp_plan(batch_size=2), episodes=allowed)
    assert read and set(read) <= set(allowed)
    assert set(plain.episodes_read) <= set(allowed) and set(dp.episodes_read) <= set(allowed)
    assert plain.metrics["episodes_used"] <= 3


def test_plan_validation():
    with pytest.raises(ValueError, match="local_steps must be >= 1"):
        LocalPlan(local_steps=0)
    with pytest.raises(ValueError, match="unit must be 'episode' or 'frame'"):
        LocalPlan(unit="person")
    with pytest.raises(ValueError, match=r"sample_rate must be in \(0, 1\]"):
        LocalPlan(sample_rate=1.5)
    with pytest.raises(ValueError, match="mu must be >= 0"):
        LocalPlan(mu=-1.0)
    for seed in (1, 2**62, bytes(15), "k" * 32):  # integers could be searched; keys are bytes
        with pytest.raises(ValueError, match="dp_seed must be null or a secret key of at least 16"):
            LocalPlan(dp=True, dp_seed=seed)
    assert KEY.hex() not in repr(LocalPlan(dp=True, dp_seed=KEY)) and "dp_seed" not in str(LocalPlan())
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['sigma'\]"):
        LocalPlan.from_dict({"sigma": 1.0})
    assert LocalPlan.from_dict(LocalPlan(dp=True).to_dict()) == LocalPlan(dp=True)


def test_bad_inputs_are_clear_errors(dataset):
    with pytest.raises(ValueError, match="non-empty list"):
        _train(dataset, LocalPlan(local_steps=1), episodes=[])
    with pytest.raises(ValueError, match="only 2 are allowed"):
        _train(dataset, _dp_plan(batch_size=4), episodes=[0, 1])
    with pytest.raises(ValueError, match="not in"):
        _train(dataset, LocalPlan(local_steps=1), episodes=[0, 99])


def _features(root: Path) -> dict:
    import json

    return json.loads((root / "meta" / "info.json").read_text())["features"]


class _Toy(torch.nn.Module):
    """loss = mean_i(x_i·w) + a + b: per-unit gradient (mean x, 1, 1), a and b share one."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.a = torch.nn.Parameter(torch.zeros(()))
        self.b = torch.nn.Parameter(torch.zeros(()))


def _toy_loss(model: _Toy, batch: dict) -> torch.Tensor:
    return ((batch["x"] * model.w).sum(-1) + model.a + model.b).mean()


@pytest.mark.parametrize("hook", [False, True])
def test_noisy_clipped_gradient_by_hand(hook):
    model = _Toy()
    params = dict(model.named_parameters())
    units = [{"x": torch.tensor([[3.0, 4.0], [3.0, 4.0]])}, {"x": torch.tensor([[0.1, 0.0]])}]
    seen = []
    out = noisy_clipped_gradient(
        model,
        params,
        units,
        _toy_loss,
        clip_norm=1.0,
        noise_multiplier=0.0,
        expected_units=4.0,
        noise=dp_streams(KEY).noise,
        norm_hook=(lambda pre, post: seen.append((pre, post))) if hook else None,
    )
    n1 = (9 + 16 + 2) ** 0.5  # unit 1 clipped to norm 1; unit 2's norm sqrt(0.01+2) > 1 too
    n2 = (0.01 + 2) ** 0.5
    expect_w = torch.tensor([3 / n1 + 0.1 / n2, 4 / n1]) / 4
    assert torch.allclose(out["w"], expect_w, atol=1e-6)
    assert out["a"].item() == pytest.approx((1 / n1 + 1 / n2) / 4, abs=1e-6)
    assert out["b"].item() == pytest.approx(out["a"].item())
    if hook:
        pre, post = seen[0]
        assert torch.allclose(pre, torch.tensor([n1, n2]), atol=1e-5)
        assert torch.allclose(post, torch.ones(2), atol=1e-5)
