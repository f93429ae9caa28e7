"""The ``smolvla-tiny`` recipe, registered on import: SmolVLA on a synthesised ~0.5M-parameter
SmolVLM (config, byte-level tokenizer and processor written to a cache folder, random frozen
VLM), fully offline. Test and benchmark scaffolding for CI and plumbing, not a production recipe.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings

from datasite.training.recipes.bundle import PolicyBundle
from datasite.training.recipes.lerobot_config import lerobot_kwargs, make_config, quiet
from datasite.training.recipes.registry import COMMON_KEYS, Recipe, register
from datasite.training.recipes.smolvla import SMOLVLA_KEYS, smolvla_bundle

__all__ = ["TINY_KEYS", "build_smolvla_tiny", "ensure_tiny_vlm"]

TINY_KEYS: dict[str, tuple[str, Any]] = {
    **SMOLVLA_KEYS,
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
_RECIPE_ONLY = frozenset({"vlm_hidden_size", "vlm_layers", "vision_hidden_size", "image_size", "cache_dir"})


def build_smolvla_tiny(cfg, inputs, outputs, stats, dev) -> PolicyBundle:
    """SmolVLA on the tiny VLM of :func:`ensure_tiny_vlm` (``cache_dir``, or FEDSILO_CACHE)."""
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    vlm_dir = ensure_tiny_vlm(
        cfg["cache_dir"],
        hidden_size=cfg["vlm_hidden_size"],
        layers=cfg["vlm_layers"],
        vision_hidden_size=cfg["vision_hidden_size"],
        image_size=cfg["image_size"],
    )
    lcfg = make_config(
        SmolVLAConfig,
        "smolvla-tiny",
        device=str(dev),
        input_features=inputs,
        output_features=outputs,
        vlm_model_name=str(vlm_dir),
        load_vlm_weights=False,
        num_vlm_layers=cfg["vlm_layers"],
        resize_imgs_with_padding=(cfg["image_size"], cfg["image_size"]),
        **lerobot_kwargs(cfg, _RECIPE_ONLY),
    )
    with quiet():
        policy = SmolVLAPolicy(lcfg)
    return smolvla_bundle(lcfg, cfg, stats, "smolvla-tiny", policy)


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
    VLM from the config, seeded). Returns the folder (under ``cache_dir``, by default
    ``settings.FEDSILO_CACHE``); safe under concurrent callers."""
    spec = {
        "v": 1,
        "hidden_size": hidden_size,
        "layers": layers,
        "vision_hidden_size": vision_hidden_size,
        "image_size": image_size,
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir else settings.FEDSILO_CACHE
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


register(
    Recipe(
        "smolvla-tiny",
        "smolvla",
        {**COMMON_KEYS, **TINY_KEYS},
        "SmolVLA on a tiny VLM",
        build_smolvla_tiny,
    )
)
