"""``smolvla``: full SmolVLA from a local checkpoint folder (``weights_dir``); nothing is
downloaded. :data:`SMOLVLA_KEYS` and :func:`smolvla_bundle` are shared with other SmolVLA
recipes (the tests' tiny one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from datasite.training.recipes.bundle import PolicyBundle
from datasite.training.recipes.lerobot_config import lerobot_kwargs, make_config, quiet, stats_tensors
from datasite.training.recipes.registry import COMMON_KEYS, Recipe, register

__all__ = ["SMOLVLA_KEYS", "SMOLVLA_WEIGHTS_HELP", "build_smolvla", "smolvla_bundle"]

SMOLVLA_KEYS: dict[str, tuple[str, Any]] = {
    "chunk_size": ("int", 10),
    "n_action_steps": ("int", 10),
    "max_state_dim": ("int", 32),
    "max_action_dim": ("int", 32),
    "tokenizer_max_length": ("int", 48),
    "num_steps": ("int", 10),
    "freeze_vision_encoder": ("bool", True),
    "train_expert_only": ("bool", True),
    "train_state_proj": ("bool", True),
    "num_expert_layers": ("int", -1),
    "self_attn_every_n_layers": ("int", 2),
    "expert_width_multiplier": ("float", 0.75),
}

_FULL_KEYS: dict[str, tuple[str, Any]] = {
    **SMOLVLA_KEYS,
    "chunk_size": ("int", 50),
    "n_action_steps": ("int", 50),
    "num_vlm_layers": ("int", 16),
    "resize_imgs_with_padding": ("ints", (512, 512)),
    "weights_dir": ("opt_path", None),
    "vlm_dir": ("opt_path", None),
}

SMOLVLA_WEIGHTS_HELP = (
    "recipe 'smolvla' needs local weights: pass config {'weights_dir': DIR} where DIR holds a "
    "lerobot SmolVLA checkpoint (config.json + model.safetensors, e.g. a copy of "
    "lerobot/smolvla_base made with `hf download lerobot/smolvla_base --local-dir DIR` on a "
    "connected machine) and DIR/vlm (or config 'vlm_dir') holds the SmolVLM2-500M-Video-Instruct "
    "config.json, tokenizer and processor files (its weights are not needed). Nothing is "
    "downloaded at a datasite; use 'smolvla-tiny' for tests."
)


def smolvla_bundle(
    lcfg: Any, cfg: dict[str, Any], stats: Any, recipe: str, policy: nn.Module
) -> PolicyBundle:
    """A built SmolVLA policy with its processors and per-frame loss (no vmap loss)."""
    from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors

    pre, post = make_smolvla_pre_post_processors(lcfg, stats_tensors(lcfg, stats))
    return PolicyBundle(policy, pre, post, recipe, cfg, _smolvla_loss, None)


def _smolvla_loss(policy: nn.Module, batch: dict[str, Any]) -> Tensor:
    return policy.forward(dict(batch), reduction="none")[0].mean()


def build_smolvla(cfg, inputs, outputs, stats, dev) -> PolicyBundle:
    """Full SmolVLA: the lerobot checkpoint in ``weights_dir``, the VLM files in ``vlm_dir``."""
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from safetensors.torch import load_model

    if not cfg["weights_dir"]:
        raise ValueError(SMOLVLA_WEIGHTS_HELP)
    wdir = Path(cfg["weights_dir"]).expanduser()
    vdir = Path(cfg["vlm_dir"]).expanduser() if cfg["vlm_dir"] else wdir / "vlm"
    if not (wdir / "model.safetensors").is_file():
        raise ValueError(f"{wdir}/model.safetensors not found. {SMOLVLA_WEIGHTS_HELP}")
    if not (vdir / "config.json").is_file() or not (vdir / "tokenizer_config.json").is_file():
        raise ValueError(f"{vdir} lacks config.json/tokenizer files. {SMOLVLA_WEIGHTS_HELP}")
    lcfg = make_config(
        SmolVLAConfig,
        "smolvla",
        device=str(dev),
        input_features=inputs,
        output_features=outputs,
        vlm_model_name=str(vdir),
        load_vlm_weights=False,  # the SmolVLA checkpoint carries the VLM weights
        **lerobot_kwargs(cfg, frozenset({"weights_dir", "vlm_dir"})),
    )
    with quiet():
        policy = SmolVLAPolicy(lcfg)
    missing, unexpected = load_model(policy, str(wdir / "model.safetensors"), strict=False)
    if missing:
        raise ValueError(
            f"{wdir}/model.safetensors does not match SmolVLA ({len(missing)} missing tensors, "
            f"e.g. {sorted(missing)[:3]}); is it a lerobot SmolVLA checkpoint?"
        )
    del unexpected  # extra tensors (e.g. dropped VLM layers) are fine
    return smolvla_bundle(lcfg, cfg, stats, "smolvla", policy)


register(
    Recipe("smolvla", "smolvla", {**COMMON_KEYS, **_FULL_KEYS}, "full SmolVLA (local weights)", build_smolvla)
)
