"""Which model family a checkpoint is, read from its config before any weight is loaded.

transformers loads the config of another family into `LlavaForConditionalGeneration` with only a warning (a
LLaVA-NeXT folder then runs as LLaVA-1.5 on its base tile, a SigLIP tower loses a real patch as if it were CLS),
so the explorer decides the family itself from the checkpoint's `config.json` (`model_type`, then
`architectures`) and refuses, with one sentence, every family it has no adapter for.

A family is one of:

* supported — an adapter says where the visual tokens come from, the patch grid(s) of one image, which scores
  exist, how reduced tokens and their positions enter the language model and how FastV prunes inside it;
* known, not yet supported — the architecture is recognised and named, with what the explorer would get wrong
  if it ran it as LLaVA-1.5 (the reason it is refused rather than approximated);
* unknown — any other `model_type`.

Reading the config is the only hub access here: a local folder is read from disk (no hub), a hub id through
`transformers.PretrainedConfig.get_config_dict`, which honours HF_HUB_OFFLINE and the local cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class CheckpointError(ValueError):
    """A checkpoint the explorer cannot load; the message is one sentence naming what is wrong."""


@dataclass(frozen=True)
class Family:
    model_type: str  # the config's model_type
    architecture: str  # the transformers class that runs it
    title: str  # how the UI and the docs name it
    supported: bool
    reason: str = ""  # one sentence, for a family that is not supported (yet)


FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("llava", "LlavaForConditionalGeneration", "LLaVA-1.5", True),
    Family("llava_next", "LlavaNextForConditionalGeneration", "LLaVA-NeXT", False,
           "its anyres tiles and row newlines have no adapter here yet (as LLaVA-1.5 it would see the base crop "
           "only)"),
    Family("llava_onevision", "LlavaOnevisionForConditionalGeneration", "LLaVA-OneVision", False,
           "its SigLIP tower (no CLS) and anyres-max tiles have no adapter here yet"),
    Family("qwen2_vl", "Qwen2VLForConditionalGeneration", "Qwen2-VL", False,
           "its dynamic resolution, 2×2 merger and M-RoPE have no adapter here yet"),
    Family("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2.5-VL", False,
           "its dynamic resolution, window attention, 2×2 merger and M-RoPE have no adapter here yet"),
)}
BY_ARCHITECTURE = {f.architecture: f for f in FAMILIES.values()}
# vision towers whose hidden states start with a CLS row (what LLaVA-1.5's "default" strategy drops): CLIP, and
# the offline default's DINOv2; SigLIP (LLaVA-Interleave, OneVision) has none
CLS_TOWERS = ("clip_vision_model", "dinov2")


def supported_titles() -> str:
    return ", ".join(f"{f.title} ({f.architecture})" for f in FAMILIES.values() if f.supported)


def is_local(source: str) -> bool:
    """A path (absolute, ./, ../, ~ or an existing folder) rather than a hub id."""
    text = str(source)
    return text.startswith(("/", ".", "~")) or Path(text).expanduser().is_dir()


def read_config(source: str) -> dict:
    """The checkpoint's config.json as a dict, or CheckpointError with one sentence: a folder without (or with
    an unreadable) config.json, a hub id that does not exist or cannot be reached."""
    if is_local(source):
        folder = Path(str(source)).expanduser()
        if not folder.is_dir():
            raise CheckpointError(f"no such folder: {folder}")
        path = folder / "config.json"
        if not path.is_file():
            raise CheckpointError("the folder has no config.json, so it is not a transformers checkpoint")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"its config.json cannot be read ({type(err).__name__})") from None
        if not isinstance(config, dict):
            raise CheckpointError("its config.json is not a JSON object")
        return config
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(str(source))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{source} is neither a local folder nor a hub model that can be reached (no such "
                              "repository, no network, or HF_HUB_OFFLINE set)") from None
    return config


def family_of(config: dict, source: str) -> Family:
    """The family of a config dict (model_type first, then architectures), or CheckpointError naming it."""
    model_type = config.get("model_type")
    family = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        for arch in config.get("architectures") or ():
            family = BY_ARCHITECTURE.get(arch)
            if family is not None:
                break
    if family is None:
        named = model_type or ", ".join(config.get("architectures") or ()) or "no model_type"
        raise CheckpointError(f"a {named!r} checkpoint, an architecture this explorer does not support (supported: "
                              f"{supported_titles()})")
    if not family.supported:
        raise CheckpointError(f"a {family.title} checkpoint, which this explorer does not support yet: "
                              f"{family.reason}")
    tower = (config.get("vision_config") or {}).get("model_type", "clip_vision_model")
    if tower not in CLS_TOWERS:
        raise CheckpointError(f"a {family.title} checkpoint with a {tower!r} vision tower, which has no CLS token: "
                              "LLaVA-1.5's rule would drop a real patch as CLS, so it is not supported yet")
    return family


def resolve(source: str) -> Family:
    """The supported family of `source` (folder or hub id), or CheckpointError with one sentence."""
    return family_of(read_config(source), source)


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__).rstrip(".")[:200]


# --------------------------------------------------------------------------------------------------
# Which method runs on which family, and by which rule (docs/methods.md, "Families"; README's table)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodRule:
    enabled: bool
    text: str  # the rule used (enabled), or one sentence saying why the method is off on this family


ON = "as on LLaVA-1.5"
METHOD_RULES: dict[str, dict[str, MethodRule]] = {
    "llava": {**{m: MethodRule(True, ON) for m in ("par", "prumerge", "prumerge+", "visionzip", "divprune", "all",
                                                   "random", "uniform", "top-attention", "tome", "pool", "none",
                                                   "cdpruner", "vispruner")},
              **{m: MethodRule(True, f"official ({repo} targets LLaVA-1.5)") for m, repo in (
                  ("fastv", "pkunlp-icler/FastV"), ("sparsevlm", "Gumpest/SparseVLMs"),
                  ("pyramiddrop", "Cooperx521/PyramidDrop"), ("dart", "ZichenWen1/DART"))}},
    # The LLaVA-NeXT adapter core (llava_next.py) is tested but not enabled in the app: its pictures (base
    # image + tiles) are not drawn yet. These are the rules it implements or would need.
    "llava_next": {
        "all": MethodRule(True, "the base crop's patches, then the unpadded tile grid with a newline after each row "
                                "(exactly pack_image_features)"),
        "none": MethodRule(True, "text only"),
        "random": MethodRule(True, "uniform over the N patch tokens the LM receives (newlines are not patches)"),
        "divprune": MethodRule(True, "on the projected patch tokens the LM receives (its rule needs no CLS or grid)"),
        "par": MethodRule(True, "relevance in the CLIP joint space per patch token; the spatial-cluster option "
                                "needs one grid and is off"),
        "top-attention": MethodRule(False, "each crop has its own CLS softmax, and no official port says how "
                                           "crops share one budget."),
        "prumerge": MethodRule(False, "the official code (42Shawn/LLaVA-PruMerge) has no LLaVA-NeXT port, and the "
                                      "IQR fence over several crops' softmaxes has no faithful rule."),
        "prumerge+": MethodRule(False, "the official code has no LLaVA-NeXT port (as for PruMerge)."),
        "visionzip": MethodRule(False, "the official LLaVA-NeXT port reduces each crop on its own and feeds the "
                                       "tiles without unpadding or newlines, a token set this adapter does not "
                                       "build yet."),
        "uniform": MethodRule(False, "the base image and the tile grid are two grids; one spacing rule for both is "
                                     "not written yet."),
        "pool": MethodRule(False, "pooling needs one grid; per-part pooling is not written yet."),
        "tome": MethodRule(False, "its A/B split alternates over raster order, which crosses from the base image into "
                                  "the tile grid; a per-part rule is not written yet."),
        **{m: MethodRule(False, "the LM's image span holds newline embeddings that are not patches, and no "
                                "official port of this in-LLM method says whether they compete.")
           for m in ("fastv", "sparsevlm", "pyramiddrop")},
        **{m: MethodRule(False, "not yet written for the base image + tile grid: its official LLaVA-NeXT handling "
                                "has not been restated here.") for m in ("cdpruner", "dart", "vispruner")},
    },
}


# A control that must stay off where a method is enabled on a family: {family: {method: (field, sentence)}}
METHOD_PARAMS_OFF: dict[str, dict[str, tuple[str, str]]] = {
    "llava_next": {"par": ("spatial", "PAR's spatial graph is off on LLaVA-NeXT: the base image and the tile grid are "
                                      "two grids, and one 4-neighbour graph over both has no faithful rule.")},
}
