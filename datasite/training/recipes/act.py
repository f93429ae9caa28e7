"""``act-small`` (the default recipe): ACT, random ResNet18 backbone (no download),
dim_model 256, 2 encoder / 1 decoder layers, chunk 10; and :data:`TINY_ACT`, its small preset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from datasite.training.recipes.bundle import PolicyBundle
from datasite.training.recipes.lerobot_config import lerobot_kwargs, make_config, stats_tensors
from datasite.training.recipes.registry import COMMON_KEYS, Recipe, register

__all__ = ["ACT_KEYS", "TINY_ACT", "act_frame_losses", "build_act"]

ACT_KEYS: dict[str, tuple[str, Any]] = {
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

#: A small ``act-small`` config (frozen ResNet, top camera only) that trains on 2 CPU cores:
#: for the integration tests, the benchmarks and the demo.
TINY_ACT: dict[str, Any] = {
    "dim_model": 64,
    "n_heads": 2,
    "dim_feedforward": 128,
    "n_encoder_layers": 1,
    "n_decoder_layers": 1,
    "n_vae_encoder_layers": 1,
    "chunk_size": 5,
    "n_action_steps": 5,
    "latent_dim": 8,
    "freeze_backbone": True,
    "cameras": ["observation.images.top"],
}


def build_act(cfg, inputs, outputs, stats, dev) -> PolicyBundle:
    """The ``act-small`` policy, its processors and its (vmap-safe) per-frame loss."""
    from lerobot.configs.types import NormalizationMode
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.act.processor_act import make_act_pre_post_processors

    mean_std = NormalizationMode.MEAN_STD
    lcfg = make_config(
        ACTConfig,
        "act-small",
        device=str(dev),
        input_features=inputs,
        output_features=outputs,
        pretrained_backbone_weights=None,
        normalization_mapping={"VISUAL": mean_std, "STATE": mean_std, "ACTION": mean_std},
        **lerobot_kwargs(cfg, frozenset({"freeze_backbone"})),
    )
    policy = ACTPolicy(lcfg)
    if cfg["freeze_backbone"]:
        for p in policy.model.backbone.parameters():
            p.requires_grad_(False)
    pre, post = make_act_pre_post_processors(lcfg, stats_tensors(lcfg, stats))
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


register(
    Recipe("act-small", "act", {**COMMON_KEYS, **ACT_KEYS}, "small ACT (~15M params), default", build_act)
)
