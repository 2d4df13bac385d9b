"""The family of a checkpoint is decided from its config before loading, and every bad checkpoint gets one
sentence: other families are refused (never loaded silently as LLaVA-1.5), a folder without a processor, with
corrupt weights, or a hub id that cannot be reached each name what is wrong. A local LLaVA-1.5 folder loads
without the hub; PAR's missing text tower is said, and PAR falls back to its offline query rule."""

from __future__ import annotations

import json

import pytest
import torch

from explorer.backend import families, models
from explorer.config import ExplorerConfig
from tests import tiny
from tests.tiny import block_network  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("block_network")


def one_sentence(message: str) -> None:
    text = message.strip()
    assert text and "\n" not in text and "Traceback" not in text, message
    assert text.count(". ") <= 1, message  # one sentence (a dotted name or version aside)


@pytest.fixture(scope="module")
def llava_folder(tmp_path_factory):
    return tiny.save_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


def load(folder, **kwargs):
    return models.load_backend(ExplorerConfig(model=str(folder), device="cpu", **kwargs))


def test_local_llava_folder_loads_without_the_hub(llava_folder):
    backend = load(llava_folder)
    assert backend.grid == tiny.GRID and backend.geometry.mode == "crop"
    # the default CLIP text tower is on the hub, which is off: PAR says so and uses its offline rule
    assert not backend.has_text_tower
    assert "PAR" in backend.notice and models.DEFAULT_CLIP in backend.notice
    enc = backend.encode(tiny.image(0))
    assert enc.tokens.n == tiny.N_PATCHES and enc.cls_joint is not None
    # the offline query rule: the joint space is the tower's normalised features (no projection)
    assert enc.tokens.joint.shape == (tiny.N_PATCHES, tiny.VISION_WIDTH)
    ref = tiny.tiny_model(0)
    for a, b in zip(backend.model.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)


def test_local_folder_serves_par_with_the_cls_query(llava_folder):
    from explorer.service import Explorer

    explorer = Explorer(ExplorerConfig(model=str(llava_folder), device="cpu"))
    try:
        backend = explorer.backend()
        enc = backend.encode(tiny.image(1))
        settings = explorer.settings({"method": "par"})
        info = explorer.query(backend, enc, "What color is the car?", settings)
        assert info.kind == "cls"
    finally:
        explorer.close()


def test_explicit_clip_that_cannot_be_reached_is_an_error(llava_folder):
    with pytest.raises(OSError):
        load(llava_folder, clip="openai/clip-vit-large-patch14-336")


def write_config(folder, **config):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("model_type, architecture, title", [
    ("llava_next", "LlavaNextForConditionalGeneration", "LLaVA-NeXT"),
    ("llava_onevision", "LlavaOnevisionForConditionalGeneration", "LLaVA-OneVision"),
    ("qwen2_vl", "Qwen2VLForConditionalGeneration", "Qwen2-VL"),
    ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2.5-VL"),
])
def test_known_families_without_an_adapter_are_refused_by_name(tmp_path, model_type, architecture, title):
    folder = write_config(tmp_path / model_type, model_type=model_type, architectures=[architecture])
    with pytest.raises(families.CheckpointError) as info:
        load(folder)
    message = str(info.value)
    one_sentence(message)
    assert title in message and "does not support yet" in message


def test_family_from_architectures_when_model_type_is_missing(tmp_path):
    folder = write_config(tmp_path / "x", architectures=["LlavaNextForConditionalGeneration"])
    with pytest.raises(families.CheckpointError, match="LLaVA-NeXT"):
        load(folder)
    assert families.family_of({"architectures": ["LlavaForConditionalGeneration"]}, "x").supported


def test_unknown_architecture_is_named(tmp_path):
    folder = write_config(tmp_path / "bert", model_type="bert", architectures=["BertModel"])
    with pytest.raises(families.CheckpointError) as info:
        load(folder)
    one_sentence(str(info.value))
    assert "'bert'" in str(info.value) and "LLaVA-1.5" in str(info.value)


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(families.CheckpointError, match="no config.json") as info:
        load(tmp_path / "empty")
    one_sentence(str(info.value))


def test_folder_without_processor(tmp_path):
    folder = tiny.save_tiny_llava(tmp_path / "noproc", processor=False)
    with pytest.raises(families.CheckpointError, match="no image processor") as info:
        load(folder)
    one_sentence(str(info.value))


def test_corrupt_weights(tmp_path):
    folder = tiny.save_tiny_llava(tmp_path / "corrupt")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])  # truncated
    with pytest.raises(families.CheckpointError, match="weights") as info:
        load(folder)
    one_sentence(str(info.value))


def test_hub_id_that_cannot_be_reached():
    with pytest.raises(families.CheckpointError) as info:
        load("nobody-here/no-such-model-xyz")
    one_sentence(str(info.value))
    assert "nobody-here/no-such-model-xyz" in str(info.value) and "hub" in str(info.value)


def test_app_keeps_serving_after_a_refused_folder(tmp_path, llava_folder):
    """The service reports the refused model in one sentence and the model it has keeps serving."""
    from explorer.errors import InputError
    from explorer.service import Explorer

    bad = write_config(tmp_path / "next", model_type="llava_next")
    explorer = Explorer(ExplorerConfig(model=str(llava_folder), device="cpu"))
    try:
        good = explorer.backend()
        failing = Explorer(ExplorerConfig(model=str(bad), device="cpu"))
        with pytest.raises(InputError, match="LLaVA-NeXT"):
            failing.backend()
        failing.close()
        assert good.encode(tiny.image(2)).tokens.n == tiny.N_PATCHES
    finally:
        explorer.close()


def test_llava_with_a_tower_without_cls_is_refused(tmp_path):
    """A LlavaForConditionalGeneration around a SigLIP tower (no CLS) would lose a real patch as CLS."""
    folder = write_config(tmp_path / "siglip", model_type="llava", architectures=["LlavaForConditionalGeneration"],
                          vision_config={"model_type": "siglip_vision_model"})
    with pytest.raises(families.CheckpointError, match="no CLS") as info:
        load(folder)
    one_sentence(str(info.value))


def test_method_rules_cover_every_method_with_one_sentence_reasons():
    from reducers import REDUCERS

    for family, rules in families.METHOD_RULES.items():
        assert set(rules) == set(REDUCERS), family
        for method, rule in rules.items():
            assert rule.text, (family, method)
            if not rule.enabled:
                assert rule.text.endswith(".") and rule.text.count(". ") == 0, (family, method)


def test_hub_ids_are_classified_from_their_config_without_loading(monkeypatch):
    """A hub id's family comes from its config.json (here a fake hub answer; tests never touch the network)."""
    from transformers import PretrainedConfig

    asked = []

    def fake(source, **kwargs):
        asked.append(source)
        return {"model_type": "qwen2_5_vl", "architectures": ["Qwen2_5_VLForConditionalGeneration"]}, kwargs

    monkeypatch.setattr(PretrainedConfig, "get_config_dict", staticmethod(fake))
    assert not families.is_local("Qwen/Qwen2.5-VL-3B-Instruct")
    with pytest.raises(families.CheckpointError, match="Qwen2.5-VL") as info:
        load("Qwen/Qwen2.5-VL-3B-Instruct")
    one_sentence(str(info.value))
    assert asked == ["Qwen/Qwen2.5-VL-3B-Instruct"]
