"""Policy recipes: named, validated configurations of lerobot policies, built offline.

A recipe is a lerobot policy class plus small defaults, one module per recipe, each
registering itself by name (:mod:`.registry`). ``build_policy`` turns a recipe name, a
JSON-able config (validated, unknown keys rejected), the dataset schema and the (federated,
aggregated) normalization statistics into a :class:`PolicyBundle`: the lerobot policy and the
lerobot pre/post-processors that hold the statistics. Initialisation is seeded (``init_seed``)
so that every site builds bit-identical frozen weights; only trainable tensors are exchanged
(see :mod:`datasite.training.weights`).

Recipes:

- ``act-small`` (default, :mod:`.act`): ACT, random ResNet18 backbone (no download),
  dim_model 256, 2 encoder / 1 decoder layers, chunk 10; ``act.TINY_ACT`` is its small preset.
- ``diffusion-small`` (:mod:`.diffusion`): Diffusion Policy with a small 1-D U-Net
  (64/128/256), GroupNorm backbone (no BatchNorm: samples never mix), horizon 16.
- ``smolvla`` (:mod:`.smolvla`): full SmolVLA from a local checkpoint folder (``weights_dir``).

The tests and benchmarks register one more, ``smolvla-tiny`` (SmolVLA on a synthesised
~0.5M-parameter VLM, fully offline), from ``tests/smolvla_tiny.py``: it is not a production
recipe.

Import this package lazily: it imports torch and, when building, lerobot (5-8 s).
"""

from datasite.training.recipes import act, diffusion, smolvla  # noqa: F401 (each registers its recipe)
from datasite.training.recipes.build import build_bundle, build_policy, delta_timestamps, synthetic_batch
from datasite.training.recipes.bundle import PolicyBundle
from datasite.training.recipes.lerobot_config import policy_features
from datasite.training.recipes.registry import (
    DEFAULT_RECIPE,
    RECIPES,
    Recipe,
    known_recipes,
    register,
    resolve_config,
)

__all__ = [
    "DEFAULT_RECIPE",
    "RECIPES",
    "PolicyBundle",
    "Recipe",
    "build_bundle",
    "build_policy",
    "delta_timestamps",
    "known_recipes",
    "policy_features",
    "register",
    "resolve_config",
    "synthetic_batch",
]
