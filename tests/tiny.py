"""Tiny, seeded, fully offline stand-ins for the explorer's models (as transformers' model testers build them).

* `tiny_llava_config`: LlavaConfig with a 3-layer CLIP vision tower (56 px, patch 14 → 4×4 = 16 patches,
  width 32, 4 heads) and a 2-layer LLaMA (width 32, vocab 128); vision_feature_layer −2, strategy "default".
* `tiny_tokenizer`: a WordLevel tokenizer over 128 entries wrapped in PreTrainedTokenizerFast, with "<s>"
  prepended, "</s>" as eos, "<image>" as a special token and no chat template (→ LLaVA-1.5 format).
* `tiny_text_side`: a 2-layer CLIPTextModelWithProjection (vocabulary of CLIP's BPE, so open_clip's ids fit)
  and a matching visual projection, tokenised by `models.clip_tokenizer(77)`.
* `tiny_backend`: `models.Backend` over those, on a device/dtype.

Nothing here touches the network; `block_network` makes any attempt fail loudly.
"""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import pytest
import torch
from torch import nn
from PIL import Image

IMAGE_SIZE = 56
PATCH = 14
GRID = (IMAGE_SIZE // PATCH, IMAGE_SIZE // PATCH)
N_PATCHES = GRID[0] * GRID[1]
VISION_WIDTH = 32
VISION_LAYERS = 3
VISION_HEADS = 4
TEXT_WIDTH = 32
VOCAB = 128
JOINT = 16
IMAGE_TOKEN_ID = 3
EOS_ID = 2

SPECIALS = ["<pad>", "<s>", "</s>", "<image>", "<unk>"]
WORDS = ("USER ASSISTANT : ? . , ! what color is the car this a photo of how many people are there cat dog "
         "red blue green image picture").split()


def devices() -> list:
    """CPU always; CUDA (fp16) when present. For pytest parametrisation."""
    out = [pytest.param("cpu", id="cpu")]
    if torch.cuda.is_available():
        out.append(pytest.param("cuda", id="cuda-fp16"))
    return out


def dtype_for(device: str) -> torch.dtype:
    return torch.float32 if device == "cpu" else torch.float16


def tol(dtype: torch.dtype) -> dict:
    return {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 3e-3, "rtol": 3e-3}


def tiny_llava_config(feature_layer=-2, layers: int = VISION_LAYERS):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=VISION_WIDTH, intermediate_size=64, num_hidden_layers=layers,
                              num_attention_heads=VISION_HEADS, image_size=IMAGE_SIZE, patch_size=PATCH,
                              projection_dim=JOINT, hidden_act="quick_gelu")
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       bos_token_id=1, eos_token_id=EOS_ID, pad_token_id=0, tie_word_embeddings=False)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID,
                       projector_hidden_act="gelu", vision_feature_layer=feature_layer,
                       vision_feature_select_strategy="default")


def tiny_model(seed: int = 0, feature_layer=-2, device: str = "cpu", dtype: torch.dtype = torch.float32):
    from transformers import LlavaForConditionalGeneration

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(tiny_llava_config(feature_layer)).eval()
    return model.to(device=device, dtype=dtype)


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    for i in range(len(vocab), VOCAB):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    assert fast.convert_tokens_to_ids("<image>") == IMAGE_TOKEN_ID and len(fast) == VOCAB
    return fast


def tiny_text_side(seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32):
    from explorer.backend import models

    side = models.offline_text_side(VISION_WIDTH, seed, joint_width=JOINT, width=32, layers=2, heads=4, mlp_width=64)
    side.text_model.to(device=device, dtype=dtype)
    side.visual_projection.to(device=device, dtype=dtype)
    return side


def tiny_backend(device: str = "cpu", seed: int = 0, feature_layer=-2, **kwargs):
    from explorer.backend import models
    from explorer.backend.geometry import Geometry

    dtype = dtype_for(device)
    model = tiny_model(seed, feature_layer, device, dtype)
    return models.LlavaBackend(model, tiny_tokenizer(), tiny_text_side(seed, device, dtype),
                          Geometry((IMAGE_SIZE, IMAGE_SIZE)), name="tiny-llava", notice="tiny seeded model", **kwargs)


def image(seed: int = 0, size: tuple[int, int] = (80, 64)) -> Image.Image:
    """A seeded random RGB picture, smooth enough that resampling keeps its structure."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.BILINEAR)


@pytest.fixture()
def block_network(monkeypatch):
    """Any attempt to open a non-local connection fails the test."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host in ("localhost", "::1") or host.startswith("127.") or host.startswith("/")):
            return real_connect(self, address)
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect(self, address)
        raise AssertionError(f"test tried to reach the network: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield


@contextmanager
def capture_inputs(module: nn.Module, names: tuple[str, ...] = ("input_ids", "inputs_embeds")
                   ) -> Iterator[list[dict[str, object]]]:
    """Record, for every forward of `module` during the block, the named keyword inputs (and the positional
    ones under "args"). Used to check what actually reaches the language model (test-only)."""
    owner = threading.get_ident()
    calls: list[dict[str, object]] = []

    def hook(_module, args, kwargs):
        if threading.get_ident() == owner:
            seen: dict[str, object] = {name: kwargs.get(name) for name in names}
            seen["args"] = args
            calls.append(seen)

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def tiny_image_processor():
    """CLIP's preprocessing at the tiny tower's size: shortest edge → IMAGE_SIZE, centre crop IMAGE_SIZE²."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def save_tiny_llava(folder, seed: int = 0, processor: bool = True):
    """A tiny LLaVA-1.5 checkpoint folder as the hub holds one: config + safetensors weights, the locally built
    tokenizer and (unless `processor=False`) a LlavaProcessor with a CLIP image processor. Returns the folder."""
    from pathlib import Path

    from transformers import LlavaProcessor

    folder = Path(folder)
    tiny_model(seed).save_pretrained(folder)
    tok = tiny_tokenizer()
    if processor:
        LlavaProcessor(image_processor=tiny_image_processor(), tokenizer=tok, patch_size=PATCH,
                       vision_feature_select_strategy="default", image_token="<image>",
                       num_additional_image_tokens=1).save_pretrained(folder)
    else:
        tok.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------------
# LLaVA-NeXT (anyres): the tiny LLaVA's tower and LM, tiles of IMAGE_SIZE on 1×2, 2×1 and 2×2 grids
# ------------------------------------------------------------------------------------------------
NEXT_PINPOINTS = [[IMAGE_SIZE, 2 * IMAGE_SIZE], [2 * IMAGE_SIZE, IMAGE_SIZE], [2 * IMAGE_SIZE, 2 * IMAGE_SIZE]]


def tiny_llava_next_config():
    from transformers import LlavaNextConfig

    base = tiny_llava_config()
    return LlavaNextConfig(vision_config=base.vision_config, text_config=base.text_config,
                           image_token_id=IMAGE_TOKEN_ID, projector_hidden_act="gelu", vision_feature_layer=-2,
                           vision_feature_select_strategy="default", image_grid_pinpoints=NEXT_PINPOINTS)


def tiny_llava_next_model(seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32):
    from transformers import LlavaNextForConditionalGeneration

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaNextForConditionalGeneration(tiny_llava_next_config()).eval()
    return model.to(device=device, dtype=dtype)


def tiny_next_image_processor():
    from transformers import LlavaNextImageProcessor

    return LlavaNextImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                   crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                   image_grid_pinpoints=NEXT_PINPOINTS)


def tiny_next_processor():
    from transformers import LlavaNextProcessor

    return LlavaNextProcessor(image_processor=tiny_next_image_processor(), tokenizer=tiny_tokenizer(), patch_size=PATCH,
                              vision_feature_select_strategy="default", image_token="<image>",
                              num_additional_image_tokens=1)


def tiny_llava_next_backend(device: str = "cpu", seed: int = 0, **kwargs):
    from explorer.backend import llava_next

    dtype = dtype_for(device)
    model = tiny_llava_next_model(seed, device, dtype)
    return llava_next._backend_class()(model, tiny_tokenizer(), tiny_text_side(seed, device, dtype),
                                       tiny_next_image_processor(), name="tiny-llava-next",
                                       notice="tiny seeded model", **kwargs)


# ------------------------------------------------------------------------------------------------
# Qwen2.5-VL: 4 vision blocks (the last with full attention), 14-px patches, 2×2 merger, windows of 2×2 units
# ------------------------------------------------------------------------------------------------
QWEN_IMAGE_TOKEN_ID = 150


def tiny_qwen2_5_vl_model(seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vision = dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=PATCH, spatial_merge_size=2,
                  temporal_patch_size=2, window_size=4 * PATCH, fullatt_block_indexes=[3], out_hidden_size=TEXT_WIDTH,
                  in_channels=3)
    text = dict(vocab_size=160, hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=EOS_ID,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]})
    config = Qwen2_5_VLConfig(vision_config=vision, text_config=text, image_token_id=QWEN_IMAGE_TOKEN_ID,
                              video_token_id=151, vision_start_token_id=152, vision_end_token_id=153)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    return model.to(device=device, dtype=dtype)


def tiny_qwen_image_processor():
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(min_pixels=(4 * PATCH) ** 2, max_pixels=(8 * PATCH) * (12 * PATCH), patch_size=PATCH,
                                 merge_size=2, temporal_patch_size=2)


def save_tiny_llava_next(folder, seed: int = 0):
    """A tiny LLaVA-NeXT checkpoint folder: config + safetensors weights + LlavaNextProcessor (local tokenizer)."""
    from pathlib import Path

    folder = Path(folder)
    tiny_llava_next_model(seed).save_pretrained(folder)
    tiny_next_processor().save_pretrained(folder)
    return folder
