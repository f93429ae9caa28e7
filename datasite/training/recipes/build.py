"""Policy recipes: named, validated configurations of lerobot policies, built offline.

A recipe is a lerobot policy class plus small defaults. ``build_policy`` turns a recipe name,
a JSON-able config (validated, unknown keys rejected), the dataset schema and the (federated,
aggregated) normalization statistics into a :class:`PolicyBundle`: the lerobot policy and the
lerobot pre/post-processors that hold the statistics. Initialisation is seeded (``init_seed``)
so that every site builds bit-identical frozen weights; only trainable tensors are exchanged
(see :mod:`datasite.training.weights`).

Recipes:

- ``act-small`` (default): ACT, random ResNet18 backbone (no download), dim_model 256,
  2 encoder / 1 decoder layers, chunk 10.
- ``diffusion-small``: Diffusion Policy with a small 1-D U-Net (64/128/256), GroupNorm
  backbone (no BatchNorm: samples never mix), horizon 16.
- ``smolvla-tiny``: SmolVLA on a synthesised ~0.5M-parameter SmolVLM (config, byte-level
  tokenizer and processor written to a cache folder, random frozen VLM): for CI and plumbing.
- ``smolvla``: full SmolVLA from a local checkpoint folder (``weights_dir``).

Import this module lazily: it imports torch and lerobot (5-8 s).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "DEFAULT_RECIPE",
    "RECIPES",
    "PolicyBundle",
    "build_bundle",
    "build_policy",
    "delta_timestamps",
    "known_recipes",
    "policy_features",
    "resolve_config",
    "synthetic_batch",
]

DEFAULT_RECIPE = "act-small"


@dataclass
class PolicyBundle:
    """A built policy with its lerobot processors.

    ``loss(batch)`` is the mean of per-frame losses over a *preprocessed* batch (every frame
    weighs the same, so the loss of a sub-batch depends on that sub-batch only: what per-unit
    DP clipping needs). ``loss_fn(policy, batch)`` is the same as a function of the policy, and
    ``vmap_loss(policy, params, batch)`` a pure version for ``torch.func`` where ``params``
    (a subset of ``named_parameters``) replaces the policy's own (``None``: not vmap-safe).
    """

    policy: nn.Module
    preprocessor: Any
    postprocessor: Any
    recipe: str
    config: dict[str, Any]
    loss_fn: Callable[[nn.Module, dict[str, Any]], Tensor] = field(repr=False)
    vmap_loss: Callable[[nn.Module, dict[str, Tensor], dict[str, Any]], Tensor] | None = field(
        default=None, repr=False
    )

    @property
    def lerobot_config(self) -> Any:
        return self.policy.config

    def loss(self, batch: dict[str, Any]) -> Tensor:
        return self.loss_fn(self.policy, batch)


# --------------------------------------------------------------------------- config schema
# type tags: int, float, bool, str, ints (tuple of ints), opt_ints, opt_int, path, opt_path,
# strs (list of str) and opt_strs.
_COMMON = {"init_seed": ("int", 0), "cameras": ("opt_strs", None)}

_ACT_KEYS = {
    "chunk_size": ("int", 10),
    "n_action_steps": ("int", 10),
    "dim_model": ("int", 256),
    "n_heads": ("int", 4),
    "dim_feedforward": ("int", 1024),
    "n_encoder_layers": ("int", 2),
    "n_decoder_layers": ("int", 1),
    "n_vae_encoder_layers": ("int", 2),
    "use_vae": ("bool", True),
    "latent_dim": ("int", 32),
    "kl_weight": ("float", 10.0),
    "dropout": ("float", 0.1),
    "pre_norm": ("bool", False),
    "vision_backbone": ("str", "resnet18"),
    "freeze_backbone": ("bool", False),  # recipe key: exclude the ResNet from training
}

_DIFFUSION_KEYS = {
    "n_obs_steps": ("int", 2),
    "horizon": ("int", 16),
    "n_action_steps": ("int", 8),
    "down_dims": ("ints", (64, 128, 256)),
    "kernel_size": ("int", 5),
    "n_groups": ("int", 8),
    "diffusion_step_embed_dim": ("int", 64),
    "spatial_softmax_num_keypoints": ("int", 32),
    "use_film_scale_modulation": ("bool", True),
    "use_separate_rgb_encoder_per_camera": ("bool", False),
    "num_train_timesteps": ("int", 100),
    "noise_scheduler_type": ("str", "DDPM"),
    "beta_schedule": ("str", "squaredcos_cap_v2"),
    "prediction_type": ("str", "epsilon"),
    "num_inference_steps": ("opt_int", None),
    "resize_shape": ("opt_ints", None),
    "crop_shape": ("opt_ints", None),
    "crop_is_random": ("bool", True),
    "vision_backbone": ("str", "resnet18"),
}

_SMOLVLA_KEYS = {
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

_SMOLVLA_TINY_KEYS = {
    **_SMOLVLA_KEYS,
    "max_state_dim": ("int", 8),
    "max_action_dim": ("int", 8),
    "tokenizer_max_length": ("int", 16),
    "expert_width_multiplier": ("float", 1.0),
    "vlm_hidden_size": ("int", 96),
    "vlm_layers": ("int", 2),
    "vision_hidden_size": ("int", 64),
    "image_size": ("int", 32),
    "cache_dir": ("opt_path", None),
}

_SMOLVLA_FULL_KEYS = {
    **_SMOLVLA_KEYS,
    "chunk_size": ("int", 50),
    "n_action_steps": ("int", 50),
    "num_vlm_layers": ("int", 16),
    "resize_imgs_with_padding": ("ints", (512, 512)),
    "weights_dir": ("opt_path", None),
    "vlm_dir": ("opt_path", None),
}

_RECIPE_ONLY_KEYS = {
    "init_seed", "cameras", "freeze_backbone", "vlm_hidden_size", "vlm_layers",
    "vision_hidden_size", "image_size", "cache_dir", "weights_dir", "vlm_dir",
}  # fmt: skip


@dataclass(frozen=True)
class _Recipe:
    name: str
    policy_type: str
    keys: dict[str, tuple[str, Any]]
    description: str


RECIPES: dict[str, _Recipe] = {
    r.name: r
    for r in (
        _Recipe("act-small", "act", {**_COMMON, **_ACT_KEYS}, "small ACT (~15M params), default"),
        _Recipe("diffusion-small", "diffusion", {**_COMMON, **_DIFFUSION_KEYS}, "small Diffusion Policy"),
        _Recipe("smolvla-tiny", "smolvla", {**_COMMON, **_SMOLVLA_TINY_KEYS}, "SmolVLA on a tiny VLM"),
        _Recipe("smolvla", "smolvla", {**_COMMON, **_SMOLVLA_FULL_KEYS}, "full SmolVLA (local weights)"),
    )
}


def known_recipes() -> list[str]:
    """Names of the available recipes."""
    return sorted(RECIPES)


def resolve_config(recipe: str, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``config`` for ``recipe`` and fill in defaults (raises ``ValueError``)."""
    spec = _recipe(recipe)
    config = dict(config or {})
    unknown = sorted(set(config) - set(spec.keys))
    if unknown:
        raise ValueError(f"recipe {recipe!r}: unknown config key(s) {unknown}; allowed: {sorted(spec.keys)}")
    out: dict[str, Any] = {}
    for key, (tag, default) in spec.keys.items():
        out[key] = _check_value(recipe, key, tag, config[key]) if key in config else default
    return out


def policy_features(
    features: Mapping[str, Mapping[str, Any]], cameras: list[str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a LeRobot dataset schema (``meta/info.json`` ``features``) into policy inputs
    (float state/env vectors and cameras) and outputs (``action``), as lerobot ``PolicyFeature``s.

    Non-float vectors (ids, indices) are ignored. ``cameras`` restricts the image inputs (full
    keys or short names such as ``"top"``)."""
    from lerobot.configs.types import FeatureType
    from lerobot.utils.feature_utils import dataset_to_policy_features

    usable = {
        k: dict(ft)
        for k, ft in features.items()
        if ft.get("dtype") in ("image", "video") or str(ft.get("dtype", "")).startswith("float")
    }
    for ft in usable.values():
        ft["shape"] = tuple(int(d) for d in ft["shape"])
        if ft["dtype"] in ("image", "video") and not ft.get("names"):
            ft["names"] = ["height", "width", "channels"]
    pf = dataset_to_policy_features(usable)
    if "action" not in pf:
        raise ValueError(f"dataset schema has no float 'action' feature (keys: {sorted(features)})")
    image_keys = [k for k, f in pf.items() if f.type is FeatureType.VISUAL]
    if cameras is not None:
        chosen = {_match_camera(c, image_keys) for c in cameras}
        pf = {k: f for k, f in pf.items() if f.type is not FeatureType.VISUAL or k in chosen}
    inputs = {k: f for k, f in pf.items() if f.type is not FeatureType.ACTION}
    outputs = {k: f for k, f in pf.items() if f.type is FeatureType.ACTION}
    return inputs, outputs


def build_policy(
    recipe: str,
    config: Mapping[str, Any] | None,
    features: Mapping[str, Mapping[str, Any]],
    stats: Mapping[str, Mapping[str, Any]],
    device: str | torch.device | None = None,
) -> PolicyBundle:
    """Build ``recipe`` for a dataset schema and normalization ``stats``
    (``{feature: {"mean"|"std"|"min"|"max": array-like}}``, e.g. aggregated across sites).

    ``device`` defaults to CUDA when available. The policy is returned in train mode."""
    cfg = resolve_config(recipe or DEFAULT_RECIPE, config)
    recipe = recipe or DEFAULT_RECIPE
    dev = torch.device(device) if device is not None else _default_device()
    inputs, outputs = policy_features(features, cfg["cameras"])
    builder = {
        "act-small": _build_act,
        "diffusion-small": _build_diffusion,
        "smolvla-tiny": _build_smolvla_tiny,
        "smolvla": _build_smolvla_full,
    }[recipe]
    with _seeded(cfg["init_seed"]):
        bundle = builder(cfg, inputs, outputs, stats, dev)
    bundle.policy.to(dev).train()
    return bundle


def build_bundle(
    code: Mapping[str, Any],
    features: Mapping[str, Mapping[str, Any]],
    stats: Mapping[str, Mapping[str, Any]],
    device: str | torch.device | None = None,
) -> PolicyBundle:
    """Build a study's code bundle (``CodeBundle.model_dump()``): a recipe, or a module's entry
    point applied to its base recipe (see :mod:`datasite.training.modules`).

    A module's source is executed here: call this only with a bundle whose approved SHA-256
    was just re-verified (the datasite's services do so)."""
    if hasattr(code, "model_dump"):
        code = code.model_dump()
    kind = code.get("kind", "recipe")
    if kind == "recipe":
        return build_policy(code.get("recipe") or DEFAULT_RECIPE, code.get("config"), features, stats, device)
    if kind != "module":
        raise ValueError(f"unknown code bundle kind {kind!r} (expected 'recipe' or 'module')")
    from datasite.training import modules

    base_recipe = code.get("base_recipe") or DEFAULT_RECIPE
    entry = code.get("entry") or "build_policy"
    source = code.get("source")
    if not isinstance(source, str) or not source:
        raise ValueError("a module bundle needs its Python source")
    base = build_policy(base_recipe, code.get("base_config"), features, stats, device)
    dev = next(base.policy.parameters()).device
    base_loss, base_vmap = base.loss_fn, base.vmap_loss
    with _seeded(base.config["init_seed"]):
        fn = modules.load_entry(source, entry)
        out = modules.call_entry(fn, base, code.get("config") or {})
    if not isinstance(out, PolicyBundle):
        raise modules.ModuleCodeError(
            f"entry point {entry!r} must return a PolicyBundle, got {type(out).__name__}"
        )
    if not isinstance(out.policy, nn.Module) or not callable(out.loss_fn):
        raise modules.ModuleCodeError(
            f"entry point {entry!r} returned a bundle without a policy module or loss_fn"
        )
    if not hasattr(out.policy, "config"):
        raise modules.ModuleCodeError(f"entry point {entry!r}: the policy must keep its lerobot config")
    if not any(p.requires_grad for p in out.policy.parameters()):
        raise modules.ModuleCodeError(f"entry point {entry!r} left no trainable parameter")
    if out.loss_fn is not base_loss and out.vmap_loss is base_vmap:
        out.vmap_loss = None  # the base recipe's vmap loss is not the module's loss
    out.recipe = f"{base_recipe}+module"
    out.policy.to(dev).train()
    return out


def delta_timestamps(bundle: PolicyBundle, features: Mapping[str, Any], fps: float) -> dict | None:
    """Delta timestamps the policy needs from the dataset (lerobot's own resolution)."""
    from lerobot.datasets.factory import resolve_delta_timestamps

    meta = SimpleNamespace(features=dict(features), fps=fps)
    return resolve_delta_timestamps(bundle.lerobot_config, meta)


def synthetic_batch(
    bundle: PolicyBundle,
    features: Mapping[str, Mapping[str, Any]],
    batch_size: int,
    fps: float = 30,
    seed: int = 0,
) -> dict[str, Any]:
    """A random raw batch shaped like collated dataset items (windows included) for the
    policy's inputs and outputs, before preprocessing: for smoke tests and benchmarks."""
    deltas = delta_timestamps(bundle, features, fps) or {}
    g = torch.Generator().manual_seed(seed)
    cfg = bundle.lerobot_config
    batch: dict[str, Any] = {}
    for key, ft in {**cfg.input_features, **cfg.output_features}.items():
        n = len(deltas.get(key, []))
        lead = (batch_size, n) if n > 1 or (key == "action" and n) else (batch_size,)
        visual = len(ft.shape) == 3
        value = torch.rand(*lead, *ft.shape, generator=g)
        batch[key] = value if visual else (value - 0.5) * 60.0
        if n:
            batch[f"{key}_is_pad"] = torch.zeros(batch_size, n, dtype=torch.bool)
    batch["task"] = ["pick up the red cube and put it in the bin"] * batch_size
    return batch


# --------------------------------------------------------------------------- builders
def _lerobot_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in _RECIPE_ONLY_KEYS}


def _build_act(cfg, inputs, outputs, stats, dev) -> PolicyBundle:
    from lerobot.configs.types import NormalizationMode
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.act.processor_act import make_act_pre_post_processors

    mean_std = NormalizationMode.MEAN_STD
    lcfg = _make_config(
        ACTConfig,
        "act-small",
        device=str(dev),
        input_features=inputs,
        output_features=outputs,
        pretrained_backbone_weights=None,
        normalization_mapping={"VISUAL": mean_std, "STATE": mean_std, "ACTION": mean_std},
        **_lerobot_kwargs(cfg),
    )
    policy = ACTPolicy(lcfg)
    if cfg["freeze_backbone"]:
        for p in policy.model.backbone.parameters():
            p.requires_grad_(False)
    pre, post = make_act_pre_post_processors(lcfg, _stats_tensors(lcfg, stats))
    return PolicyBundle(policy, pre, post, "act-small", cfg, _act_loss, _act_vmap_loss)


def _act_loss(policy: nn.Module, batch: dict[str, Any]) -> Tensor:
    return act_frame_losses(policy.model, batch).mean()


def _act_vmap_loss(policy: nn.Module, params: dict[str, Tensor], batch: dict[str, Any]) -> Tensor:
    from torch.func import functional_call

    act = policy.model
    inner = {k.removeprefix("model."): v for k, v in params.items()}
    return act_frame_losses(act, batch, lambda b: functional_call(act, inner, (b,))).mean()


def act_frame_losses(act: nn.Module, batch: dict[str, Any], fn: Callable | None = None) -> Tensor:
    """(B,) per-frame ACT loss: L1 over valid chunk entries (+ KL·weight when training with
    the VAE). Unlike ``ACTPolicy.forward`` it is a per-sample loss (no batch-wide
    normalisation, no ``.item()``), so it is usable under ``vmap`` and for per-unit clipping."""
    cfg = act.config
    b = dict(batch)
    if cfg.image_features:
        b["observation.images"] = [b[k] for k in cfg.image_features]
    a_hat, (mu, log_sigma_x2) = (fn or act)(b)
    err = (b["action"] - a_hat).abs()
    valid = (~b["action_is_pad"]).unsqueeze(-1).to(err.dtype)
    loss = (err * valid).sum((1, 2)) / (valid.sum((1, 2)) * err.shape[-1]).clamp_min(1)
    if cfg.use_vae and log_sigma_x2 is not None:
        kld = (-0.5 * (1 + log_sigma_x2 - mu.pow(2) - log_sigma_x2.exp())).sum(-1)
        loss = loss + cfg.kl_weight * kld
    return loss


def _build_diffusion(cfg, inputs, outputs, stats, dev) -> PolicyBundle:
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors

    lcfg = _make_config(
        DiffusionConfig,
        "diffusion-small",
        device=str(dev),
        input_features=inputs,
        output_features=outputs,
        pretrained_backbone_weights=None,
        use_group_norm=True,  # no BatchNorm: per-sample independence (DP) and no running stats
        do_mask_loss_for_padding=False,  # keeps the loss an equal-weight mean over frames
        **_lerobot_kwargs(cfg),
    )
    policy = DiffusionPolicy(lcfg)
    pre, post = make_diffusion_pre_post_processors(lcfg, _stats_tensors(lcfg, stats))
    return PolicyBundle(policy, pre, post, "diffusion-small", cfg, _diffusion_loss, None)


def _diffusion_loss(policy: nn.Module, batch: dict[str, Any]) -> Tensor:
    return policy.forward(batch)[0]  # MSE mean over (frames, horizon, dims): equal frame weights


def _smolvla_bundle(lcfg, cfg, stats, recipe: str, policy) -> PolicyBundle:
    from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors

    pre, post = make_smolvla_pre_post_processors(lcfg, _stats_tensors(lcfg, stats))
    return PolicyBundle(policy, pre, post, recipe, cfg, _smolvla_loss, None)


def _smolvla_loss(policy: nn.Module, batch: dict[str, Any]) -> Tensor:
    return policy.forward(dict(batch), reduction="none")[0].mean()


def _build_smolvla_tiny(cfg, inputs, outputs, stats, dev) -> PolicyBundle:
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    vlm_dir = ensure_tiny_vlm(
        cfg["cache_dir"],
        hidden_size=cfg["vlm_hidden_size"],
        layers=cfg["vlm_layers"],
        vision_hidden_size=cfg["vision_hidden_size"],
        image_size=cfg["image_size"],
    )
    lcfg = _make_config(
        SmolVLAConfig,
        "smolvla-tiny",
        device=str(dev),
        input_features=inputs,
        output_features=outputs,
        vlm_model_name=str(vlm_dir),
        load_vlm_weights=False,
        num_vlm_layers=cfg["vlm_layers"],
        resize_imgs_with_padding=(cfg["image_size"], cfg["image_size"]),
        **_lerobot_kwargs(cfg),
    )
    with _quiet():
        policy = SmolVLAPolicy(lcfg)
    return _smolvla_bundle(lcfg, cfg, stats, "smolvla-tiny", policy)


SMOLVLA_WEIGHTS_HELP = (
    "recipe 'smolvla' needs local weights: pass config {'weights_dir': DIR} where DIR holds a "
    "lerobot SmolVLA checkpoint (config.json + model.safetensors, e.g. a copy of "
    "lerobot/smolvla_base made with `hf download lerobot/smolvla_base --local-dir DIR` on a "
    "connected machine) and DIR/vlm (or config 'vlm_dir') holds the SmolVLM2-500M-Video-Instruct "
    "config.json, tokenizer and processor files (its weights are not needed). Nothing is "
    "downloaded at a datasite; use 'smolvla-tiny' for tests."
)


def _build_smolvla_full(cfg, inputs, outputs, stats, dev) -> PolicyBundle:
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
    lcfg = _make_config(
        SmolVLAConfig,
        "smolvla",
        device=str(dev),
        input_features=inputs,
        output_features=outputs,
        vlm_model_name=str(vdir),
        load_vlm_weights=False,  # the SmolVLA checkpoint carries the VLM weights
        **_lerobot_kwargs(cfg),
    )
    with _quiet():
        policy = SmolVLAPolicy(lcfg)
    missing, unexpected = load_model(policy, str(wdir / "model.safetensors"), strict=False)
    if missing:
        raise ValueError(
            f"{wdir}/model.safetensors does not match SmolVLA ({len(missing)} missing tensors, "
            f"e.g. {sorted(missing)[:3]}); is it a lerobot SmolVLA checkpoint?"
        )
    del unexpected  # extra tensors (e.g. dropped VLM layers) are fine
    return _smolvla_bundle(lcfg, cfg, stats, "smolvla", policy)


# --------------------------------------------------------------------------- tiny VLM
def ensure_tiny_vlm(
    cache_dir: str | Path | None = None,
    *,
    hidden_size: int = 96,
    layers: int = 2,
    vision_hidden_size: int = 64,
    image_size: int = 32,
) -> Path:
    """Write (once) a tiny SmolVLM-style folder: config.json, a byte-level BPE tokenizer with
    the SmolVLM special tokens, and a SmolVLMProcessor. No weights (SmolVLA initialises the
    VLM from the config, seeded). Returns the folder; safe under concurrent callers."""
    spec = {
        "v": 1,
        "hidden_size": hidden_size,
        "layers": layers,
        "vision_hidden_size": vision_hidden_size,
        "image_size": image_size,
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir or os.environ.get("FEDSILO_CACHE") or Path.home() / ".cache/fedsilo")
    out = root.expanduser() / f"tiny-smolvlm-{digest}"
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        _write_tiny_vlm(tmp, **{k: v for k, v in spec.items() if k != "v"})
        try:
            tmp.rename(out)
        except OSError:  # another process won the race
            if not (out / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_tiny_vlm(
    out: Path, *, hidden_size: int, layers: int, vision_hidden_size: int, image_size: int
) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, SmolVLMConfig, SmolVLMProcessor
    from transformers.models.smolvlm.image_processing_smolvlm import SmolVLMImageProcessor
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    specials = [
        "<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<image>",
        "<fake_token_around_image>", "<global-img>", "<video>",
    ]  # fmt: skip
    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # one token per byte: any text works
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    roles = {  # special-token roles (not secrets)
        "bos_token": "<|im_start|>",
        "eos_token": "<end_of_utterance>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **roles,
        extra_special_tokens={
            "fake_image_token": "<fake_token_around_image>",
            "image_token": "<image>",
            "global_image_token": "<global-img>",
            "end_of_utterance_token": "<end_of_utterance>",
        },
    )
    fast.add_special_tokens({"additional_special_tokens": specials[1:]})
    patch = max(4, image_size // 4)
    image_processor = SmolVLMImageProcessor(
        do_image_splitting=False,
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
    )
    seq_len = (image_size // patch) ** 2 // 4
    processor = SmolVLMProcessor(
        image_processor=image_processor,
        tokenizer=fast,
        video_processor=SmolVLMVideoProcessor(),
        image_seq_len=seq_len,
    )
    processor.save_pretrained(out)
    heads = max(1, hidden_size // 32)
    config = SmolVLMConfig(
        image_token_id=vocab["<image>"],
        pad_token_id=0,
        scale_factor=2,
        vision_config={
            "hidden_size": vision_hidden_size,
            "intermediate_size": 2 * vision_hidden_size,
            "num_hidden_layers": 1,
            "num_attention_heads": max(1, vision_hidden_size // 32),
            "image_size": image_size,
            "patch_size": patch,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": len(fast),
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": 1,
            "head_dim": hidden_size // heads,
            "max_position_embeddings": 512,
            "rms_norm_eps": 1e-5,
            "pad_token_id": 0,
        },
    )
    config.save_pretrained(out)


# --------------------------------------------------------------------------- helpers
def _recipe(name: str) -> _Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(known_recipes())}")
    return RECIPES[name]


def _check_value(recipe: str, key: str, tag: str, value: Any) -> Any:
    def bad(expected: str) -> ValueError:
        return ValueError(f"recipe {recipe!r}: {key} must be {expected}, got {value!r}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if tag.startswith("opt_") and value is None:
        return None
    base = tag.removeprefix("opt_")
    if base == "int":
        if not is_int(value):
            raise bad("an integer")
        return value
    if base == "float":
        if not (is_int(value) or isinstance(value, float)) or not np.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if base == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if base == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if base == "ints":
        if not isinstance(value, list | tuple) or not value or not all(map(is_int, value)):
            raise bad("a non-empty list of integers")
        return tuple(value)
    if base == "strs":
        if not isinstance(value, list | tuple) or not value:
            raise bad("a non-empty list of strings")
        if not all(isinstance(v, str) for v in value):
            raise bad("a non-empty list of strings")
        return list(value)
    if base == "path":
        if not isinstance(value, str | os.PathLike) or not str(value):
            raise bad("a folder path")
        return str(value)
    raise AssertionError(tag)


def _make_config(cls: type, recipe: str, **kwargs: Any) -> Any:
    try:
        cfg = cls(**kwargs)
        cfg.validate_features()
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise ValueError(f"recipe {recipe!r}: invalid configuration: {exc}") from exc
    return cfg


def _stats_tensors(lcfg: Any, stats: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Tensor]]:
    """float32 tensors for the features the policy normalises; clear error when missing."""
    from lerobot.configs.types import NormalizationMode

    need = {
        NormalizationMode.MEAN_STD: ("mean", "std"),
        NormalizationMode.MIN_MAX: ("min", "max"),
        NormalizationMode.QUANTILES: ("q01", "q99"),
        NormalizationMode.QUANTILE10: ("q10", "q90"),
    }
    out: dict[str, dict[str, Tensor]] = {}
    feats = {**lcfg.input_features, **lcfg.output_features}
    for key, ft in feats.items():
        mode = lcfg.normalization_mapping.get(ft.type.value, NormalizationMode.IDENTITY)
        if mode is NormalizationMode.IDENTITY:
            continue
        have = stats.get(key) or {}
        missing = [s for s in need[mode] if s not in have]
        if missing:
            raise ValueError(
                f"normalization stats for {key!r} lack {missing} (mode {mode.value}); "
                f"stats given for {sorted(stats)}"
            )
        out[key] = {}
        for name, value in have.items():
            t = torch.as_tensor(np.asarray(value, dtype=np.float32))
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"normalization stats {key}.{name} contain NaN or inf")
            out[key][name] = t
    return out


def _match_camera(name: str, image_keys: list[str]) -> str:
    for key in image_keys:
        if name in (key, key.rsplit(".", 1)[-1]):
            return key
    raise ValueError(f"unknown camera {name!r}; the dataset has {image_keys}")


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Deterministic initialisation without disturbing the caller's RNG state."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence lerobot's progress prints while building SmolVLA."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield
