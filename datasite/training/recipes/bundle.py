"""The built policy that training, evaluation and module bundles pass around."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

__all__ = ["PolicyBundle"]


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
