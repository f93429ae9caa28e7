"""Recipes build offline through lerobot; exchanged parameters round-trip and are validated."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from datasite.datagen import so100_features
from datasite.training.recipes import (
    build_policy,
    known_recipes,
    policy_features,
    resolve_config,
    synthetic_batch,
)
from datasite.training.weights import (
    apply_weights,
    check_against_manifest,
    load_safetensors,
    manifest,
    save_safetensors,
    trainable_state,
)
from tests.smolvla_tiny import ensure_tiny_vlm

H, W = 32, 40
FEATURES = so100_features(image_size=(H, W))


def _stats() -> dict[str, dict[str, np.ndarray]]:
    joints = {
        "mean": np.zeros(6),
        "std": np.full(6, 20.0),
        "min": np.full(6, -90.0),
        "max": np.full(6, 90.0),
    }
    image = {
        "mean": np.full((3, 1, 1), 0.4),
        "std": np.full((3, 1, 1), 0.2),
        "min": np.zeros((3, 1, 1)),
        "max": np.ones((3, 1, 1)),
    }
    return {
        "observation.state": joints,
        "action": joints,
        "observation.images.top": image,
        "observation.images.wrist": image,
    }


STATS = _stats()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _raw_batch(bundle, b: int = 3) -> dict:
    return synthetic_batch(bundle, FEATURES, b)


@pytest.fixture(scope="module")
def vlm_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fedsilo-cache")


# --------------------------------------------------------------------------- recipes
def test_known_and_unknown_recipes():
    assert {"act-small", "diffusion-small", "smolvla-tiny", "smolvla"} <= set(known_recipes())
    with pytest.raises(ValueError, match=r"unknown recipe 'mlp'.*act-small.*diffusion-small"):
        build_policy("mlp", {}, FEATURES, STATS)


def test_config_validation_is_clear():
    cfg = resolve_config("act-small", {"dim_model": 64, "cameras": ["top"]})
    assert cfg["dim_model"] == 64 and cfg["chunk_size"] == 10 and cfg["cameras"] == ["top"]
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['dim_modle'\].*dim_model"):
        resolve_config("act-small", {"dim_modle": 64})
    with pytest.raises(ValueError, match="dim_model must be an integer"):
        resolve_config("act-small", {"dim_model": "64"})
    with pytest.raises(ValueError, match="use_vae must be true or false"):
        resolve_config("act-small", {"use_vae": 1})
    assert resolve_config("diffusion-small", {"down_dims": [32, 64]})["down_dims"] == (32, 64)
    with pytest.raises(ValueError, match=r"invalid configuration.*horizon"):
        build_policy("diffusion-small", {"horizon": 10}, FEATURES, STATS, device="cpu")
    with pytest.raises(ValueError, match="unknown camera 'side'"):
        build_policy("act-small", {"cameras": ["side"]}, FEATURES, STATS, device="cpu")


def test_policy_features_skip_ids_and_pick_cameras():
    inputs, outputs = policy_features(FEATURES, ["wrist"])
    assert set(inputs) == {"observation.state", "observation.images.wrist"}
    assert set(outputs) == {"action"}
    assert inputs["observation.images.wrist"].shape == (3, H, W)


def test_missing_stats_is_a_clear_error():
    stats = {k: v for k, v in STATS.items() if k != "action"}
    with pytest.raises(ValueError, match=r"stats for 'action' lack \['mean', 'std'\]"):
        build_policy("act-small", {}, FEATURES, stats, device="cpu")


@pytest.mark.parametrize(
    ("recipe", "config"),
    [
        ("act-small", {"dim_model": 64, "dim_feedforward": 128, "n_vae_encoder_layers": 1}),
        ("diffusion-small", {"down_dims": [32, 64], "horizon": 8, "n_action_steps": 4}),
    ],
)
def test_recipe_builds_and_computes_a_loss(recipe, config):
    bundle = build_policy(recipe, config, FEATURES, STATS, device="cpu")
    assert bundle.recipe == recipe and bundle.policy.training
    assert bundle.config["init_seed"] == 0
    batch = bundle.preprocessor(_raw_batch(bundle))
    loss = bundle.loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    state = trainable_state(bundle.policy)
    assert list(state) == sorted(state) and len(state) > 10
    # normalization statistics live in the processors, not in the exchanged parameters
    assert not any("normal" in name or "stats" in name for name in state)


def test_act_freeze_backbone_and_seeded_init():
    a = build_policy("act-small", {"dim_model": 64}, FEATURES, STATS, device="cpu")
    b = build_policy("act-small", {"dim_model": 64}, FEATURES, STATS, device="cpu")
    c = build_policy("act-small", {"dim_model": 64, "init_seed": 1}, FEATURES, STATS, device="cpu")
    sa, sb, sc = (trainable_state(x.policy) for x in (a, b, c))
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
    assert not all(torch.equal(sa[n], sc[n]) for n in sa)
    frozen = build_policy(
        "act-small", {"dim_model": 64, "freeze_backbone": True}, FEATURES, STATS, device="cpu"
    )
    names = trainable_state(frozen.policy)
    assert not any(".backbone." in n for n in names) and any(".backbone." in n for n in sa)


def test_smolvla_tiny_builds_offline(vlm_cache):
    bundle = build_policy("smolvla-tiny", {"cache_dir": str(vlm_cache)}, FEATURES, STATS, "cpu")
    n_all = sum(p.numel() for p in bundle.policy.parameters())
    n_train = sum(p.numel() for p in trainable_state(bundle.policy).values())
    assert 200_000 < n_all < 1_000_000 and 0 < n_train < n_all  # VLM frozen, expert trains
    batch = bundle.preprocessor(_raw_batch(bundle))
    assert batch["observation.language.tokens"].shape[0] == 3  # tokenised offline
    loss = bundle.loss(batch)
    assert torch.isfinite(loss)
    loss.backward()


def test_smolvla_needs_local_weights(tmp_path, vlm_cache):
    with pytest.raises(ValueError, match=r"needs local weights.*weights_dir.*smolvla-tiny"):
        build_policy("smolvla", {}, FEATURES, STATS, device="cpu")
    with pytest.raises(ValueError, match=r"model\.safetensors not found"):
        build_policy("smolvla", {"weights_dir": str(tmp_path)}, FEATURES, STATS, device="cpu")


def test_smolvla_loads_a_local_checkpoint(tmp_path, vlm_cache):
    """The full recipe's loading path, exercised with a tiny checkpoint in the same layout."""
    tiny = build_policy("smolvla-tiny", {"cache_dir": str(vlm_cache)}, FEATURES, STATS, "cpu")
    wdir = tmp_path / "smolvla"
    wdir.mkdir()
    tiny.policy.save_pretrained(wdir)
    shutil.copytree(Path(tiny.lerobot_config.vlm_model_name), wdir / "vlm")
    cfg = {
        "weights_dir": str(wdir),
        "num_vlm_layers": 2,
        "resize_imgs_with_padding": [32, 32],
        "max_state_dim": 8,
        "max_action_dim": 8,
        "expert_width_multiplier": 1.0,
        "chunk_size": 10,
        "n_action_steps": 10,
        "init_seed": 5,  # the checkpoint, not the seed, decides the weights
    }
    full = build_policy("smolvla", cfg, FEATURES, STATS, device="cpu")
    a, b = trainable_state(tiny.policy), trainable_state(full.policy)
    assert list(a) == list(b) and all(torch.equal(a[n], b[n]) for n in a)


def test_tiny_vlm_cache_is_reused(tmp_path):
    first = ensure_tiny_vlm(tmp_path, hidden_size=32, layers=1)
    assert ensure_tiny_vlm(tmp_path, hidden_size=32, layers=1) == first
    assert json.loads((first / "config.json").read_text())["text_config"]["hidden_size"] == 32
    assert ensure_tiny_vlm(tmp_path, hidden_size=64, layers=1) != first


# --------------------------------------------------------------------------- weights
@pytest.fixture(scope="module")
def small_act():
    return build_policy("act-small", {"dim_model": 32, "dim_feedforward": 64}, FEATURES, STATS, device="cpu")


def test_manifest_round_trip(small_act):
    state = trainable_state(small_act.policy)
    man = manifest(state)
    assert [m["name"] for m in man] == sorted(state)
    assert all(m["dtype"] == "float32" for m in man)
    data = save_safetensors(state)
    assert isinstance(data, bytes)
    back = load_safetensors(data, man)
    assert list(back) == list(state) and all(torch.equal(back[n], state[n]) for n in state)
    json.dumps(man)  # JSON-serialisable


def test_manifest_validation_errors(small_act):
    state = trainable_state(small_act.policy)
    man = manifest(state)
    name = man[0]["name"]
    wrong_shape = dict(state, **{name: torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=rf"{name}: shape \[3, 3\] != manifest shape"):
        check_against_manifest(wrong_shape, man)
    nan = dict(state, **{name: torch.full_like(state[name], float("nan"))})
    with pytest.raises(ValueError, match=f"{name}: contains NaN"):
        check_against_manifest(nan, man)
    inf = dict(state, **{name: state[name].clone().fill_(float("inf"))})
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_safetensors(save_safetensors(inf), man)
    wrong_dtype = dict(state, **{name: state[name].double()})
    with pytest.raises(ValueError, match="dtype float64 != manifest dtype float32"):
        check_against_manifest(wrong_dtype, man)
    missing = {k: v for k, v in state.items() if k != name}
    with pytest.raises(ValueError, match=f"missing {name}"):
        check_against_manifest(missing, man)
    extra = dict(state, bogus=torch.zeros(1))
    with pytest.raises(ValueError, match="unexpected bogus"):
        check_against_manifest(extra, man)
    with pytest.raises(ValueError, match="not a valid safetensors payload"):
        load_safetensors(b"\x80\x04not safetensors")


def test_apply_weights(small_act):
    policy = small_act.policy
    state = trainable_state(policy)
    shifted = {n: t + 1.0 for n, t in state.items()}
    apply_weights(policy, shifted)
    now = trainable_state(policy)
    assert all(torch.equal(now[n], shifted[n]) for n in now)
    with pytest.raises(ValueError, match="contains NaN"):
        apply_weights(policy, {n: t * float("nan") for n, t in state.items()})
    apply_weights(policy, state)
