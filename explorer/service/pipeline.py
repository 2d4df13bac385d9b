"""From an image and a prompt to a `Reduction`: encode (once per image and backend), PAR's query, the
`VisualTokens` for the settings' inputs (once per image, inputs and query: their memoised similarities survive
slider moves) and the reducer (once per settings). Every step is cached in the service's bounded LRUs."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import torch
import torch.nn.functional as F

from reducers import RegistryEntry, Reduction, VisualTokens
from reducers.inllm import budget_for_equivalent

from ..images import load_image
from ..backend.protocol import Backend, Encoded
from ..errors import InputError
from ..session import Session
from ..settings import Settings

if TYPE_CHECKING:
    from . import Explorer


@dataclass(frozen=True)
class QueryInfo:
    """What PAR's query is and where it came from."""

    kind: str  # "prompt" | "points" | "cls"
    embedding: torch.Tensor  # [e], unit length
    description: str
    phrase: str = ""
    prompts: tuple[str, ...] = ()
    truncated: bool = False
    patches: tuple[int, ...] = ()  # the pointed patches (kind "points")

    def as_dict(self) -> dict:
        out = {"kind": self.kind, "description": self.description}
        if self.kind == "prompt":
            out.update(phrase=self.phrase, prompts=list(self.prompts), truncated=self.truncated)
        if self.patches:
            out["patches"] = list(self.patches)
        return out


def encoded(x: Explorer, image, session: Session, model: str | None = None, progress=None
            ) -> tuple[Backend, Encoded, Session]:
    """(backend, Encoded, new session) for this image, re-using the session's encode when it can."""
    model = model or x.config.model
    backend = x.backend(model, progress)
    path = image.get("path") if isinstance(image, dict) else image if isinstance(image, str) else None
    if session.same_image(path, model):
        enc = backend.lookup(session.key)
        if enc is not None:
            return backend, enc, session
    pil = load_image(image, x.config.max_image_pixels)
    if progress is not None:
        progress(0.5, desc="Encoding the image")
    try:
        enc = backend.encode(pil)
    except ValueError as err:
        raise InputError(unusable(backend, err)) from None
    return backend, enc, session.with_image(path, enc.key, model, Path(path).name if path else "image")


def cached(x: Explorer, session: Session) -> tuple[Backend, Encoded]:
    """The session's backend and encode from the caches only (never loads a file), or InputError."""
    backend = x.loaded(session.model or "")
    enc = backend.lookup(session.key or "") if backend is not None else None
    if enc is None:
        raise InputError("Nothing to work on: explore an image first (or explore it again if it has been a while).")
    return backend, enc


def unusable(backend, err: ValueError) -> str:
    return (f"The model {backend.name!r} produced unusable features for this image ({err}); "
            "the checkpoint may be broken.")


def clip_prompt(x: Explorer, prompt) -> str:
    if prompt is None:
        return ""
    if not isinstance(prompt, str):
        raise InputError("The prompt must be text.")
    return prompt.strip()[: x.config.max_prompt_chars]


def query(backend: Backend, enc: Encoded, prompt: str, settings: Settings) -> QueryInfo:
    """PAR's query: the pointed patches when there are any, else the prompt through the CLIP text tower,
    else (a tower without a text side) the CLS token."""
    joint, cls_joint = enc.joint(settings.inputs.joint_layer)
    if joint is None:
        raise InputError(f"{backend.name} gives no patch embeddings for PAR.")
    if settings.points:
        patches = tuple(dict.fromkeys(p for p in (enc.patch_at(x, y) for x, y in settings.points) if p is not None))
        if not patches:
            raise InputError("The pointed places lie outside the region the model sees; click inside the picture.")
        q = F.normalize(F.normalize(joint[list(patches)].float(), dim=-1).mean(0), dim=0)
        where = f"{len(patches)} pointed patch{'es' if len(patches) > 1 else ''}"
        return QueryInfo("points", q, f"the mean embedding of {where}", patches=patches)
    if backend.has_text_tower:
        if not prompt:
            raise InputError("PAR needs a prompt: type a question about the image (or point at patches).")
        q = backend.encode_query(prompt, rewrite=settings.inputs.rewrite)
        said = f"the prompt rewritten as “{q.phrase}”" if q.rewrite else "the raw prompt"
        return QueryInfo("prompt", q.embedding, f"{said}, embedded by the CLIP text tower", q.phrase, q.prompts,
                         q.truncated)
    q = F.normalize(cls_joint.float(), dim=0)
    return QueryInfo("cls", q, "the CLS token — relevance to the image's own summary (no text tower here: "
                               "click patches to point the query)")


def tokens(x: Explorer, backend: Backend, enc: Encoded, prompt: str, settings: Settings,
           needs: Iterable[str] = ()) -> tuple[VisualTokens, QueryInfo | None]:
    """The encode's VisualTokens with the settings' attention mode and joint layer, plus PAR's query and
    FastV's LLM attention when `needs` asks for them; cached, memoised similarities carried over."""
    needs = set(needs)
    inputs = settings.inputs
    q = query(backend, enc, prompt, settings) if "query" in needs else None
    lm, probe = "lm_attn" in needs, "lm_probe" in needs
    qkey = (q.kind, q.patches, prompt if q.kind == "prompt" else None, inputs.rewrite) if q else None
    key = (backend.name, enc.key, inputs.attention, inputs.joint_layer, qkey, prompt if lm or probe else None,
           lm, probe)

    def build() -> VisualTokens:
        changes = {}
        if inputs.attention != "official":
            changes["cls_attn"] = enc.attention(inputs.attention)
        if inputs.joint_layer != "feature":
            changes["joint"] = enc.joint(inputs.joint_layer)[0]
        if q is not None:
            changes["query"] = q.embedding
        if lm:
            changes["lm_attn"] = backend.lm_attention(enc, prompt)
        if probe:  # SparseVLM, PyramidDrop: the backend runs (and caches) each plan's staged forward
            changes["lm_probe"] = functools.partial(backend.lm_stages, enc, prompt)
            changes["lm_probe"].n_layers = int(backend.lm_config.num_hidden_layers)  # the sweep reads it
        try:
            return enc.tokens.derive(**changes) if changes else enc.tokens
        except ValueError as err:
            raise InputError(unusable(backend, err)) from None

    return x._tokens.get_or_compute(key, build), q


def reduce(x: Explorer, backend: Backend, enc: Encoded, prompt: str, settings: Settings
           ) -> tuple[Reduction, VisualTokens, QueryInfo | None]:
    """The settings' method on this image (and prompt, for methods that read it), cached by settings."""
    entry = settings.entry
    vt, q = tokens(x, backend, enc, prompt, settings, entry.needs)
    reads_prompt = bool({"lm_attn", "lm_probe"} & set(entry.needs)) or (q is not None and q.kind == "prompt")
    key = (backend.name, enc.key, prompt if reads_prompt else None, settings.key())

    def run() -> Reduction:
        try:
            return entry(vt, settings.params)
        except ValueError as err:
            raise InputError(str(err).rstrip(".") + ".") from None

    return x._reductions.get_or_compute(key, run), vt, q


def last(x: Explorer, session: Session) -> tuple[Backend, Encoded, Settings, Reduction, VisualTokens]:
    """The session's last explore, recomputed from the caches (free when nothing was evicted)."""
    backend, enc = cached(x, session)
    settings = session.settings or x.settings()
    red, vt, _ = reduce(x, backend, enc, session.prompt, settings)
    return backend, enc, settings, red, vt


def at_budget(x: Explorer, settings: Settings, budget: int, match: tuple[int, int] | None = None
              ) -> list[tuple[str, RegistryEntry, Settings]]:
    """[(method, entry, settings)] for every method: budget methods at `budget` (within their slider's
    range), the others at their own settings. `match=(N, L)`: budget methods at the budget whose equivalent
    tokens over the LLM's L layers come closest to `budget` (FastV: fewer than M from layer K on)."""
    out = []
    for method, entry in x.schema.methods.items():
        other = settings.with_method(method)
        if entry.budgeted:
            top = int(x.schema.specs[entry.budget_field].control.maximum)
            value = max(1, min(budget, top)) if match is None else budget_for_equivalent(
                other.params, entry.budget_field, budget, match[0], match[1], min(top, match[0]))
            other = other.with_values(**{entry.budget_field: value})
        out.append((method, entry, other))
    return out
