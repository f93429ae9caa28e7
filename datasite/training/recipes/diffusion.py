"""``diffusion-small``: Diffusion Policy with a small 1-D U-Net (64/128/256), GroupNorm
backbone (no BatchNorm: samples never mix), horizon 16."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from datasite.training.recipes.bundle import PolicyBundle
from datasite.training.recipes.lerobot_config import lerobot_kwargs, make_config, stats_tensors
from datasite.training.recipes.registry import COMMON_KEYS, Recipe, register

__all__ = ["DIFFUSION_KEYS", "build_diffusion"]

DIFFUSION_KEYS: dict[str, tuple[str, Any]] = {
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


def build_diffusion(cfg, inputs, outputs, stats, dev) -> PolicyBundle:
    """The ``diffusion-small`` policy and its processors (no vmap loss)."""
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors

    lcfg = make_config(
        DiffusionConfig,
        "diffusion-small",
        device=str(dev),
        input_features=inputs,
        output_features=outputs,
        pretrained_backbone_weights=None,
        use_group_norm=True,  # no BatchNorm: per-sample independence (DP) and no running stats
        do_mask_loss_for_padding=False,  # keeps the loss an equal-weight mean over frames
        **lerobot_kwargs(cfg),
    )
    policy = DiffusionPolicy(lcfg)
    pre, post = make_diffusion_pre_post_processors(lcfg, stats_tensors(lcfg, stats))
    return PolicyBundle(policy, pre, post, "diffusion-small", cfg, _diffusion_loss, None)


def _diffusion_loss(policy: nn.Module, batch: dict[str, Any]) -> Tensor:
    return policy.forward(batch)[0]  # MSE mean over (frames, horizon, dims): equal frame weights


register(
    Recipe(
        "diffusion-small",
        "diffusion",
        {**COMMON_KEYS, **DIFFUSION_KEYS},
        "small Diffusion Policy",
        build_diffusion,
    )
)
