"""The contract every reducer shares: inputs (`VisualTokens`), output (`Reduction`), the registry.

Shapes: N patch tokens on an h×w grid, d feature width, dk key width, e joint (CLIP image-text) width.
Everything here is pure: same inputs → same outputs, no globals, no I/O. Tensors may be float32 or
float16, on any device; internal arithmetic is done in float32 and `Reduction.tokens` keeps the dtype and
device of `VisualTokens.features`.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .cache import LRU
from .graph import ClusterSweep, components


@dataclass(frozen=True)
class Control:
    """How one parameter is shown, validated and named — the only place a method's control is defined.

    kind:    "slider" (a number in [minimum, maximum] on a `step` grid), "number" (a whole number typed in a
             box, in [minimum, maximum]), "toggle" (a bool) or "choice" (one of `options`)
    label:   the control's short title in the UI; info: one line saying what it does
    integer: the value is a whole number (sliders with an integer step, "number")
    budget:  a token budget: its usable maximum is the image's N (the UI sets the slider's maximum to N;
             a reducer caps larger values at N and reports the tokens it actually kept)
    """

    kind: str
    label: str
    info: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    options: tuple[str, ...] = ()
    budget: bool = False

    @property
    def integer(self) -> bool:
        return self.kind == "number" or (self.kind == "slider" and float(self.step).is_integer())

    def check(self, owner: str, name: str, value) -> None:
        """ValueError (naming the parameter) unless `value` is valid for this control."""
        where = f"{owner}.{name}"
        if self.kind == "toggle":
            if not isinstance(value, bool):
                raise ValueError(f"{where} must be true or false, got {value!r}")
            return
        if self.kind == "choice":
            if value not in self.options:
                raise ValueError(f"{where} must be one of {', '.join(map(repr, self.options))}, got {value!r}")
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where} must be a finite number, got {value!r}")
        if self.integer and int(value) != value:
            raise ValueError(f"{where} must be a whole number, got {value!r}")
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"{where}={value} is outside [{self.minimum:g}, {self.maximum:g}]")


def slider(default: float, minimum: float, maximum: float, step: float, info: str, label: str | None = None, *,
           budget: bool = False):
    """A dataclass field shown as a slider (a whole-number slider when `step` is a whole number)."""
    control = Control("slider", label or "", info, float(minimum), float(maximum), float(step), budget=budget)
    return field(default=default, metadata={"control": control})


def number(default: int, minimum: int, maximum: int, info: str, label: str | None = None):
    """A dataclass field for a whole number typed in a box (e.g. a seed)."""
    return field(default=default, metadata={"control": Control("number", label or "", info, minimum, maximum, 1.0)})


def toggle(default: bool, info: str, label: str | None = None):
    """A dataclass field shown as a checkbox."""
    return field(default=default, metadata={"control": Control("toggle", label or "", info)})


def choice(default: str, options: tuple[str, ...], info: str, label: str | None = None):
    """A dataclass field shown as a radio group of `options`."""
    if default not in options:
        raise ValueError(f"default {default!r} is not one of {options}")
    return field(default=default, metadata={"control": Control("choice", label or "", info, options=tuple(options))})


def controls(params_cls) -> tuple[tuple[str, Control, object], ...]:
    """(name, control, default) of every control field of a params dataclass, in declaration order; the label
    falls back to the field name."""
    out = []
    for f in dataclasses.fields(params_cls):
        control = f.metadata.get("control")
        if control is not None:
            if not control.label:
                control = dataclasses.replace(control, label=f.name.replace("_", " "))
            out.append((f.name, control, f.default))
    return tuple(out)


def check_ranges(params) -> None:
    """Raise ValueError for any control field whose value is not valid (range, whole number, option, bool)."""
    for name, control, _ in controls(type(params)):
        control.check(type(params).__name__, name, getattr(params, name))


def params_or_default(params, cls):
    """`params`, or `cls()` when None; ValueError (not AttributeError later) for another parameter type."""
    if params is None:
        return cls()
    if not isinstance(params, cls):
        raise ValueError(f"expected {cls.__name__} (or None for its defaults), got {type(params).__name__}")
    return params


def _all_finite(x: Tensor) -> bool:
    """No NaN / Inf in x. A finite sum proves it in one cheap reduction (any NaN or ±Inf makes the sum NaN or
    ±Inf); only when the sum is not finite (a bad value, or float16 overflow) is the elementwise test run."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def _check_matrix(name: str, x: Tensor | None, n: int, ndim: int = 2) -> None:
    if x is None:
        return
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != ndim or x.shape[0] != n or (ndim == 2 and x.shape[1] < 1):
        want = "[N]" if ndim == 1 else "[N, width ≥ 1]"
        raise ValueError(f"{name} must have shape {want} with N={n}, got {tuple(x.shape)}")
    _check_values(name, x)


def _check_values(name: str, x: Tensor) -> None:
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if not _all_finite(x):
        raise ValueError(f"{name} contains NaN or Inf values")


def _check_grid(grid, n: int) -> tuple[int, int]:
    """(h, w) as ints with h·w = N, or ValueError (never TypeError / IndexError) for anything else."""
    if grid is None:
        return (1, n)
    try:
        h, w = grid
        ok = all(not isinstance(g, bool) and int(g) == g and g >= 1 for g in (h, w)) and int(h) * int(w) == n
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"grid {grid!r} does not match N={n} tokens (need two positive integers h, w with h·w = N)")
    return (int(h), int(w))


class memo(cached_property):
    """A per-image quantity memoised on a `VisualTokens` instance, declared with the fields it depends on.

        @memo("features")
        def feature_similarity(self) -> Tensor: ...

    `VisualTokens.derive` carries a memo over to the derived instance exactly when none of its declared
    fields changed, so a new query or attention mode never recomputes the similarity matrix, and a memo can
    never be kept stale by a forgotten name.
    """

    def __init__(self, *depends: str):
        self.depends = frozenset(depends)

    def __call__(self, fn):
        super().__init__(fn)  # cached_property's: takes fn's name and docstring
        return self


class _Rows:
    """Per-patch rows of a quantity computed on demand (see `VisualTokens.key_rows`)."""

    def __init__(self):
        self.table: dict = {}
        self.lock = threading.Lock()


@dataclass(frozen=True, eq=False)
class VisualTokens:
    """One image's visual tokens, as the reducers consume them.

    features: [N, d]  patch features handed to the projector (LLaVA: hidden_states[-2] without CLS)
    keys:     [N, dk] patch keys of the consuming layer (PruMerge's merge similarity), optional
    cls_attn: [N]     CLS→patch attention (PruMerge, top-attention), optional
    grid:     (h, w)  with h·w = N, raster order
    joint:    [N, e]  patches in the CLIP image-text space (PAR), optional
    query:    [e]     L2-normalised text embedding of the (rewritten) prompt (PAR), optional
    lm_attn:  [L, 2, N] attention the image tokens receive inside each of the LLM's L layers, head mean,
              for this image and prompt (FastV): [:, 0] from the last prompt token (FastV's official
              ranking), [:, 1] averaged over all query positions that can see the image (the paper's
              prose); optional
    feature_layer_attn: [N] CLS→patch attention *inside the layer that produces `features`* (LLaVA:
              encoder.layers[-2], whose output is hidden_states[-2]; one layer before `cls_attn`'s):
              softmax(q·kᵀ/√d_head) per head, the CLS row's patch columns, SUMMED over the heads
              (VisionZip's `attentions[-2][:, :, 0, 1:].sum(1)`); optional
    feature_layer_keys: [N, d_head] keys of that same layer, k_proj(layer_norm1(hidden_states[-3])) with
              its bias, split into heads and AVERAGED over the heads (VisionZip's `metric`:
              `key_states.mean(1)`), patch rows; optional
    cls_feature: [d] the CLS row of the layer `features` come from (LLaVA: hidden_states[-2][0]), handed to
              the LLM as a token by VisionZip; optional
    projected: [N, p] the patch tokens after the multimodal projector, i.e. the LLM input embeddings of the
              image (LLaVA: mm_projector(features)); DivPrune selects on these; optional
    lm_probe: a function `plan -> StagedRecord` that runs the LLM's staged forward for this image and prompt
              (SparseVLM, PyramidDrop: the attention at each stage's layer over the tokens still present) —
              the backend computes it once per image + prompt + plan and caches it; optional

    Derived per-image quantities (similarity matrices, neighbour lists) are computed lazily and memoised on
    the instance, so a caller that keeps one `VisualTokens` per image pays for them once.
    """

    features: Tensor
    keys: Tensor | None = None
    cls_attn: Tensor | None = None
    grid: tuple[int, int] | None = None
    joint: Tensor | None = None
    query: Tensor | None = None
    lm_attn: Tensor | None = None
    feature_layer_attn: Tensor | None = None
    feature_layer_keys: Tensor | None = None
    cls_feature: Tensor | None = None
    projected: Tensor | None = None
    lm_probe: Callable | None = None

    def __post_init__(self) -> None:
        self._validate(None)

    def _validate(self, changed: set[str] | None) -> None:
        """Check shapes, dtypes and finiteness of every field (`changed=None`) or only of the changed ones."""

        def check(name: str) -> bool:
            return changed is None or name in changed

        x = self.features
        if check("features"):
            if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
                shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"features must be a non-empty [N, d] tensor, got {shape}")
        n = x.shape[0]
        if check("features"):
            _check_matrix("features", x, n)
        for name, ndim in (("keys", 2), ("cls_attn", 1), ("joint", 2), ("feature_layer_attn", 1),
                           ("feature_layer_keys", 2), ("projected", 2)):
            if check(name) or check("features"):
                _check_matrix(name, getattr(self, name), n, ndim=ndim)
        if self.cls_feature is not None and (check("cls_feature") or check("features")):
            c = self.cls_feature
            if not isinstance(c, Tensor) or c.ndim != 1 or c.shape[0] != x.shape[1]:
                raise ValueError(f"cls_feature must have shape [d={x.shape[1]}] (the width of features), got "
                                 f"{tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__}")
            _check_values("cls_feature", c)
        if check("grid") or check("features"):
            object.__setattr__(self, "grid", _check_grid(self.grid, n))
        if self.lm_attn is not None and (check("lm_attn") or check("features")):
            a = self.lm_attn
            if not isinstance(a, Tensor) or a.ndim != 3 or a.shape[1] != 2 or a.shape[2] != n or a.shape[0] < 1:
                raise ValueError(f"lm_attn must have shape [L ≥ 1, 2, N={n}], got {getattr(a, 'shape', type(a).__name__)}")
            if not a.is_floating_point() or not _all_finite(a):
                raise ValueError("lm_attn must be a finite floating-point tensor")
        if self.lm_probe is not None and check("lm_probe") and not callable(self.lm_probe):
            raise ValueError(f"lm_probe must be callable (plan -> StagedRecord), got {type(self.lm_probe).__name__}")
        if self.query is not None and (check("query") or check("joint")):
            q = self.query
            if not isinstance(q, Tensor) or q.ndim != 1 or q.shape[0] < 1:
                raise ValueError(f"query must be a non-empty [e] tensor, got {getattr(q, 'shape', type(q).__name__)}")
            if not q.is_floating_point():
                raise ValueError(f"query must be a floating-point tensor, got {q.dtype}")
            if self.joint is not None and q.shape[0] != self.joint.shape[1]:
                raise ValueError(
                    f"query width {q.shape[0]} does not match joint width {self.joint.shape[1]}"
                )
            if not _all_finite(q):
                raise ValueError("query contains NaN or Inf values")

    @property
    def n(self) -> int:
        return self.features.shape[0]

    def require(self, *names: str, method: str) -> None:
        missing = [name for name in names if getattr(self, name) is None]
        if missing:
            raise ValueError(f"{method} needs VisualTokens.{', '.join(missing)}")

    def derive(self, **changes) -> "VisualTokens":
        """A copy with some fields replaced (e.g. another query or attention mode) that keeps the memoised
        per-image quantities whose inputs did not change, so a slider move never recomputes them."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise TypeError(f"VisualTokens has no field(s) {', '.join(sorted(unknown))}")
        new = object.__new__(type(self))
        for name in names:
            object.__setattr__(new, name, changes.get(name, getattr(self, name)))
        new._validate(set(changes))  # unchanged fields were validated when `self` was built
        for name, value in self.__dict__.items():
            declared = getattr(type(self), name, None)
            if isinstance(declared, memo) and not declared.depends & changes.keys():
                new.__dict__[name] = value
        return new

    def clusters(self, threshold: float, spatial: bool = False) -> tuple[int, Tensor]:
        """Connected components of {S ≥ threshold} over `feature_similarity` (4-neighbour edges only if
        `spatial`): (count, labels [N]). Memoised per (threshold, spatial), at most 64 entries per image;
        read off the spanning forest when `cluster_sweep` has built it (O(N) instead of O(N²)); safe when
        several threads share one VisualTokens."""
        def compute() -> tuple[int, Tensor]:
            forest = self._forests.get(bool(spatial))
            if forest is not None:
                count, labels = forest.labels(threshold)
            else:
                count, labels = components(self.feature_similarity, threshold, self.grid if spatial else None)
            return count, torch.as_tensor(labels, device=self.features.device)

        return self._components.get_or_compute((float(threshold), bool(spatial)), compute)

    def key_rows(self, name, idx: Tensor, compute: Callable[[Tensor], Tensor]) -> Tensor:
        """`compute(idx)` [M, …] — a per-patch quantity that depends only on `keys` (e.g. each patch's key
        neighbours) — with every patch's row computed once per image and memoised under `name`: a slider move
        that changes the kept set computes only the rows of patches it has not seen yet."""
        memo_rows = self._key_rows
        with memo_rows.lock:
            rows, done = memo_rows.table.get(name, (None, None))
            missing = idx if done is None else idx[~done[idx]]
            if missing.numel():
                new = compute(missing)
                if rows is None:
                    rows = new.new_empty((self.n, *new.shape[1:]))
                    done = torch.zeros(self.n, dtype=torch.bool, device=idx.device)
                rows[missing] = new
                done[missing] = True
                memo_rows.table[name] = (rows, done)
            return rows[idx]

    def projected_prefix(self, name, count: int, extend: Callable[[Tensor | None, object, int], tuple[Tensor, object]]
                         ) -> Tensor:
        """The first `count` entries of a sequence that depends only on `projected` and whose shorter runs are
        prefixes of longer ones (DivPrune's greedy order), memoised per image under `name` and extended on demand:
        `extend(sequence so far or None, its state, count)` returns (the sequence of ≥ count entries, new state).
        A budget move to a length already reached costs nothing; a longer one continues where the last stopped."""
        memo_rows = self._projected_rows
        with memo_rows.lock:
            seq, state = memo_rows.table.get(name, (None, None))
            if seq is None or seq.numel() < count:
                seq, state = extend(seq, state, count)
                memo_rows.table[name] = (seq, state)
            return seq[:count]

    def cluster_sweep(self, spatial: bool = False) -> ClusterSweep:
        """The maximum spanning forest of `feature_similarity` (4-neighbour graph if `spatial`), memoised per
        image: cluster counts for every threshold at once, and every later `clusters` call in O(N)."""
        forest = self._forests.get(bool(spatial))
        if forest is None:
            forest = ClusterSweep(self.feature_similarity, self.grid if spatial else None)
            self._forests[bool(spatial)] = forest  # a dict store is atomic; two racing builds give equal forests
        return forest

    # Memoised per-image quantities, each with the fields it depends on -----------------------------
    @memo("features")
    def _components(self) -> LRU:
        """(threshold, spatial) → (count, labels): at most 64 thresholds per image."""
        return LRU(64)

    @memo("features")
    def _forests(self) -> dict:
        """spatial → `ClusterSweep` (the maximum spanning forest of `feature_similarity`)."""
        return {}

    @memo("keys")
    def _key_rows(self) -> _Rows:
        """name → (rows [N, …], done [N] bool) of per-patch quantities that depend only on the keys."""
        return _Rows()

    @memo("projected")
    def _projected_rows(self) -> _Rows:
        """name → (sequence, state) of prefix-consistent sequences that depend only on `projected`."""
        return _Rows()

    @memo("features")
    def feature_similarity(self) -> Tensor:
        """[N, N] float32 cosine similarity of feature rows (PAR clustering and redundancy)."""
        xn = F.normalize(self.features.float(), dim=-1)
        return xn @ xn.T

    @memo("joint")
    def normalised_joint(self) -> Tensor:
        """[N, e] float32 unit-length joint embeddings (PAR relevance: one matrix-vector product per prompt)."""
        self.require("joint", method="relevance")
        return F.normalize(self.joint.float(), dim=-1)

    @memo("projected")
    def projected_distance(self) -> Tensor:
        """[N, N] float32 cosine distance 1 − cos of the projected rows (DivPrune), with +inf on the diagonal
        (a token is never its own nearest neighbour). Off the diagonal it is exactly `1 − x̂ x̂ᵀ` of the same
        float32 product `feature_similarity` uses, so a reference can rebuild it bit for bit."""
        self.require("projected", method="DivPrune")
        xn = F.normalize(self.projected.float(), dim=-1)
        dist = 1.0 - xn @ xn.T
        dist.fill_diagonal_(torch.inf)
        return dist

    @memo("projected")
    def projected_similarity(self) -> Tensor:
        """[N, N] float32 cosine similarity x̂ x̂ᵀ of the projected rows (CDPruner's DPP kernel)."""
        self.require("projected", method="projected similarity")
        xn = F.normalize(self.projected.float(), dim=-1)
        return xn @ xn.T

    @memo("keys")
    def normalised_keys(self) -> Tensor:
        """[N, dk] float32 unit-length key rows (PruMerge merging: M×N similarity, M kept)."""
        self.require("keys", method="key similarity")
        return F.normalize(self.keys.float(), dim=-1)


@dataclass(frozen=True, eq=False)
class Trace:
    """A method's own diagnostics, defined in the method's file as a frozen dataclass subclass: the pictures,
    the histogram, the export, the inspector and the readout ask it and never test which method ran.

    The five calls every method may answer (the defaults say "nothing of my own"):
        heat()       (label, [N] float score per patch): the heatmap and the histogram draw it
        lines()      threshold lines for the histogram, in the heat's units: (label, value) or
                     (label, value, kind) with kind "quartile" | "fence" | "cut" (the line's style; "cut" if left out)
        per_patch()  extra per-patch export fields, by name: [N] tensors, or plain JSON-able data
        inspect(i)   inspector lines (markdown) for patch i
        readout()    short facts for the readout text
    and four the pictures and the summary use:
        numbers()    scalar facts for the summary (e.g. PruMerge's q1, q3, fence)
        facts(i)     patch i as plain data (what `inspect` says, as the inspector's dict holds it)
        regions()    the groups picture: (style, [N] long labels, caption), style "clusters" (components, small ones
                     grey) or "groups" (one colour per group, −1 = in no group); None: no picture of its own
        marked()     (caption, [S] patch indices) outlined in the kept picture, or None
    and one the backend uses:
        replay()     (plan, record) of a staged in-LLM method, replayed in answers and scores; else None
    """

    def heat(self) -> tuple[str, Tensor] | None:
        return None

    def lines(self) -> list[tuple]:
        return []

    def per_patch(self) -> dict[str, object]:
        return {}

    def inspect(self, i: int) -> list[str]:
        return []

    def readout(self) -> list[str]:
        return []

    def numbers(self) -> dict[str, float | int]:
        return {}

    def facts(self, i: int) -> dict:
        return {}

    def regions(self) -> tuple[str, Tensor, str] | None:
        return None

    def marked(self) -> tuple[str, Tensor] | None:
        return None

    def replay(self) -> tuple[object, object] | None:
        """(plan, record) of a method that prunes inside the LLM in recorded stages (SparseVLM, PyramidDrop):
        the backend replays them in answers and scores; None for every other method."""
        return None


@dataclass(frozen=True, eq=False)
class TopScoreTrace(Trace):
    """Methods that keep the top of one per-patch score (top-M CLS attention, FastV's LLM attention): the
    score, what it is, and the cut at the lowest kept value."""

    label: str  # what the score is, e.g. "LLM attention to each patch at layer 2"
    attn: Tensor  # [N] the score
    kept: Tensor  # [M] the patches kept
    export_as: str = ""  # the per-patch export field holding the score ("" : none, e.g. it is an input already)
    kept_from_layer: int = 0  # > 0: all tokens enter the LLM and these remain from this layer on

    def heat(self):
        return self.label, self.attn

    def lines(self):
        if not self.kept.numel():
            return []
        return [("cut", float(self.attn[self.kept].float().min()), "cut")]

    def per_patch(self):
        return {self.export_as: self.attn} if self.export_as else {}

    def facts(self, i):
        return {self.export_as: float(self.attn[i])} if self.export_as else {}

    def inspect(self, i):
        return [f"{self.label.split(':')[0]}: {float(self.attn[i]):.4g}"] if self.export_as else []

    def readout(self):
        if self.kept_from_layer:
            return [f"all tokens in LLM layers < {self.kept_from_layer}, the top-scored ones from layer "
                    f"{self.kept_from_layer} on"]
        return []


@dataclass(frozen=True, eq=False)
class Reduction:
    """What a reducer did: what every method has, and its own diagnostics in `trace`.

    kept:   [M]  LongTensor of patch indices (0..N-1), unique, in the order their tokens appear (M = 0 only
            for the text-only floor "none")
    tokens: [M', d] what the projector / LLM receives, in the LLM's order: `n_lead` leading tokens that belong
            to no patch, then tokens[n_lead + i] belongs to kept[i] for i < M, then the appended tokens.
            Invariant: M' = n_lead + M + (appended) and `n_extra` = n_lead + appended (every token that is not
            a kept patch's own). A PruMerge merge appends one aggregate token of the pruned patches last
            (M' = M + 1, `n_extra=1`) when at least one patch was pruned; VisionZip leads with the CLS token
            (when handed over, `n_lead=1`, as the official LLaVA-1.5 code) and appends its C contextual tokens
            after the dominant patches (M' = cls + M + C, `n_extra = cls + C`). `patch_tokens` is tokens[n_lead:
            n_lead + M].
    stages: ordered funnel of counts, e.g. {"tokens": 576, "outliers": 31, "merged": 32}
    layer:  the LLM layer from which on only `tokens` remain (FastV: all N patch features enter the LLM and
            layers 0…layer−1 see them all); 0 for every method that reduces before the LLM
    groups: merging methods whose groups partition the patches (ToMe, VisionZip's contexts, pooling): for every
            patch the position in `tokens` of the token that holds it (−1: in no token), and its weight in it
    trace:  the method's own diagnostics (`Trace`): scores, thresholds, clusters, merge groups …
    """

    method: str
    kept: Tensor
    tokens: Tensor
    grid: tuple[int, int]
    stages: dict[str, int]
    n_extra: int = 0  # tokens that are no kept patch's own (PruMerge: 1 aggregate, appended; VisionZip: the CLS
    # token when handed over, leading, and its C contextual tokens, appended)
    layer: int = 0
    groups: Tensor | None = None  # [N] long
    group_weight: Tensor | None = None  # [N] float
    trace: Trace = field(default_factory=Trace)
    n_lead: int = 0  # tokens handed BEFORE the kept patches' own (VisionZip's CLS); counted in n_extra too

    @property
    def patch_tokens(self) -> Tensor:
        """[M, d] the kept patches' own tokens: tokens[n_lead + i] belongs to kept[i]."""
        return self.tokens[self.n_lead : self.n_lead + self.kept.numel()]

    @property
    def n_tokens(self) -> int:
        """N, the number of patch tokens before reduction."""
        return self.grid[0] * self.grid[1]

    @property
    def n_kept(self) -> int:
        """M', the number of visual tokens the LLM receives (FastV: from layer `layer` on)."""
        return int(self.tokens.shape[0])

    @property
    def extra_token(self) -> bool:
        return self.n_extra > 0

    @property
    def kept_mask(self) -> Tensor:
        mask = torch.zeros(self.n_tokens, dtype=torch.bool, device=self.kept.device)
        mask[self.kept] = True
        return mask

    def summary(self) -> dict:
        """Plain JSON-able numbers: what a client or an export needs."""
        n, m = self.n_tokens, self.n_kept
        out = {
            "method": self.method,
            "n_tokens": n,
            "n_kept": m,
            "n_patches_kept": int(self.kept.numel()),
            "n_extra": self.n_extra,
            "n_lead": self.n_lead,
            "llm_layer": self.layer,
            "compression": 1.0 - m / n,
            "stages": dict(self.stages),
        }
        out.update(self.trace.numbers())
        return out


@dataclass(frozen=True)
class RegistryEntry:
    """A registered method: call it like the function it wraps, `REDUCERS[name](vt, params)`.

    fn:       the reducer, `fn(vt, params) -> Reduction` (bind variants with functools.partial)
    params:   the frozen parameter dataclass; its control fields (`slider`, `toggle`, …) are the method's
              settings everywhere — UI controls, API keywords, export, comparison; `params=None` → defaults
    label:    the method's full name, as captions and legends show it
    summary:  one line saying what it does
    needs:    the `VisualTokens` fields it reads (methods whose inputs a backend cannot give are left out)
    paper:    citation (authors, arXiv id) or "" for a baseline
    formula:  the method in one line, as the Explain section shows it
    headline: the paper's headline numbers, worded as the paper's (shown labelled as such), or ""
    """

    fn: Callable[[VisualTokens, object], Reduction]
    params: type
    label: str
    summary: str
    needs: tuple[str, ...] = ()
    paper: str = ""
    formula: str = ""
    headline: str = ""

    def __call__(self, vt: VisualTokens, params=None) -> Reduction:
        return self.fn(vt, params_or_default(params, self.params))

    @property
    def controls(self) -> tuple[tuple[str, Control, object], ...]:
        return controls(self.params)

    @property
    def budgeted(self) -> bool:
        """Takes a token budget (a control with `budget=True`): matched-budget comparisons set it to M."""
        return self.budget_field is not None

    @property
    def budget_field(self) -> str | None:
        return next((name for name, control, _ in self.controls if control.budget), None)
