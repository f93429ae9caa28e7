"""Before the first round: this site's normalization statistics and the code's initial weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datasite.consent import split_episodes
from datasite.studies import approved_request, code_bundle, plan_of, verified_code
from datasite.training.stats import site_stats


def study_stats(study: str) -> dict[str, dict[str, list]]:
    """This site's normalization statistics over its training episodes (for pooling)."""
    from datasite.training.recipes import resolve_config  # imports torch

    request = approved_request(study)
    ds = request.datasets.get()
    split = split_episodes(ds, plan_of(request))
    code = code_bundle(request)
    if code.kind == "module":  # validated, not executed: statistics need no researcher code
        resolve_config(code.base_recipe, code.base_config)
    else:
        resolve_config(code.recipe, code.config)
    keys = [
        k
        for k in ds.summary["features"]
        if k in ("observation.state", "action") or k.startswith("observation.images.")
    ]
    stats = site_stats(Path(ds.root), split.train, keys, seed=plan_of(request).seed)
    return {k: {n: np.asarray(v).tolist() for n, v in by.items()} for k, by in stats.items()}


def initial_weights(study: str, norm_stats: dict) -> bytes:
    """The code's seeded initial trainable weights (data-free) as safetensors."""
    from datasite.training.recipes import build_bundle  # imports torch
    from datasite.training.weights import save_safetensors, trainable_state

    request = approved_request(study)
    code = verified_code(request)  # a module's source runs below: only the approved one
    ds = request.datasets.get()
    bundle = build_bundle(code, ds.summary["features"], norm_stats, device="cpu")
    return save_safetensors(trainable_state(bundle.policy))
