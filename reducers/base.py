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

from .graph import ClusterSweep, components


@dataclass(frozen=True)
class Slider:
    """How a parameter is shown in the UI: range, step and a one-line explanation."""

    minimum: float
    maximum: float
    step: float
    info: str


def slider(default: float, minimum: float, maximum: float, step: float, info: str):
    """A dataclass field whose metadata tells the UI how to build its slider (and validation its range)."""
    return field(default=default, metadata={"slider": Slider(minimum, maximum, step, info)})


def check_ranges(params) -> None:
    """Raise ValueError for any slider field outside its declared range (or not finite)."""
    for f in dataclasses.fields(params):
        spec = f.metadata.get("slider")
        if spec is None:
            continue
        value = getattr(params, f.name)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{type(params).__name__}.{f.name} must be a finite number, got {value!r}")
        if not spec.minimum <= value <= spec.maximum:
            raise ValueError(
                f"{type(params).__name__}.{f.name}={value} is outside [{spec.minimum}, {spec.maximum}]"
            )


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


class _Memo:
    """A small insertion-ordered memo with a size bound and a lock (shared by derived VisualTokens)."""

    def __init__(self, size: int):
        self.size, self._items, self._lock = size, {}, threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key):
        with self._lock:
            return self._items.get(key)

    def put(self, key, value) -> None:
        with self._lock:
            if key not in self._items and len(self._items) >= self.size:
                self._items.pop(next(iter(self._items)))
            self._items[key] = value


@dataclass(frozen=True, eq=False)
class VisualTokens:
    """One image's visual tokens, as the reducers consume them.

    features: [N, d]  patch features handed to the projector (LLaVA: hidden_states[-2] without CLS)
    keys:     [N, dk] patch keys of the consuming layer (PruMerge's merge similarity), optional
    cls_attn: [N]     CLS→patch attention (PruMerge, top-attention), optional
    grid:     (h, w)  with h·w = N, raster order
    joint:    [N, e]  patches in the CLIP image-text space (PAR), optional
    query:    [e]     L2-normalised text embedding of the (rewritten) prompt (PAR), optional

    Derived per-image quantities (similarity matrices, neighbour lists) are computed lazily and memoised on
    the instance, so a caller that keeps one `VisualTokens` per image pays for them once.
    """

    features: Tensor
    keys: Tensor | None = None
    cls_attn: Tensor | None = None
    grid: tuple[int, int] | None = None
    joint: Tensor | None = None
    query: Tensor | None = None

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
        if check("keys") or check("features"):
            _check_matrix("keys", self.keys, n)
        if check("cls_attn") or check("features"):
            _check_matrix("cls_attn", self.cls_attn, n, ndim=1)
        if check("joint") or check("features"):
            _check_matrix("joint", self.joint, n)
        if check("grid") or check("features"):
            object.__setattr__(self, "grid", _check_grid(self.grid, n))
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
        carried = {"feature_similarity": "features", "normalised_keys": "keys", "normalised_joint": "joint",
                   "_components": "features", "_forests": "features", "_key_rows": "keys", "_key_rows_lock": "keys"}
        for memo, source in carried.items():
            if memo in self.__dict__ and source not in changes:
                new.__dict__[memo] = self.__dict__[memo]
        return new

    def clusters(self, threshold: float, spatial: bool = False) -> tuple[int, Tensor]:
        """Connected components of {S ≥ threshold} over `feature_similarity` (4-neighbour edges only if
        `spatial`): (count, labels [N]). Memoised per (threshold, spatial), at most 64 entries per image;
        read off the spanning forest when `cluster_sweep` has built it (O(N) instead of O(N²)); safe when
        several threads share one VisualTokens."""
        memo = self.__dict__.setdefault("_components", _Memo(64))
        key = (float(threshold), bool(spatial))
        found = memo.get(key)
        if found is None:
            forest = self.__dict__.get("_forests", {}).get(bool(spatial))
            if forest is not None:
                count, labels = forest.labels(threshold)
            else:
                count, labels = components(self.feature_similarity, threshold, self.grid if spatial else None)
            found = (count, torch.as_tensor(labels, device=self.features.device))
            memo.put(key, found)
        return found

    def key_rows(self, name, idx: Tensor, compute: Callable[[Tensor], Tensor]) -> Tensor:
        """`compute(idx)` [M, …] — a per-patch quantity that depends only on `keys` (e.g. each patch's key
        neighbours) — with every patch's row computed once per image and memoised under `name`: a slider move
        that changes the kept set computes only the rows of patches it has not seen yet."""
        table = self.__dict__.setdefault("_key_rows", {})
        with self.__dict__.setdefault("_key_rows_lock", threading.Lock()):
            rows, done = table.get(name, (None, None))
            missing = idx if done is None else idx[~done[idx]]
            if missing.numel():
                new = compute(missing)
                if rows is None:
                    rows = new.new_empty((self.n, *new.shape[1:]))
                    done = torch.zeros(self.n, dtype=torch.bool, device=idx.device)
                rows[missing] = new
                done[missing] = True
                table[name] = (rows, done)
            return rows[idx]

    def cluster_sweep(self, spatial: bool = False) -> ClusterSweep:
        """The maximum spanning forest of `feature_similarity` (4-neighbour graph if `spatial`), memoised per
        image: cluster counts for every threshold at once, and every later `clusters` call in O(N)."""
        forests = self.__dict__.setdefault("_forests", {})
        forest = forests.get(bool(spatial))
        if forest is None:
            forest = ClusterSweep(self.feature_similarity, self.grid if spatial else None)
            forests[bool(spatial)] = forest  # a dict store is atomic; two racing builds give equal forests
        return forest

    # Memoised per-image quantities -------------------------------------------------------------
    @cached_property
    def feature_similarity(self) -> Tensor:
        """[N, N] float32 cosine similarity of feature rows (PAR clustering and redundancy)."""
        xn = F.normalize(self.features.float(), dim=-1)
        return xn @ xn.T

    @cached_property
    def normalised_joint(self) -> Tensor:
        """[N, e] float32 unit-length joint embeddings (PAR relevance: one matrix-vector product per prompt)."""
        self.require("joint", method="relevance")
        return F.normalize(self.joint.float(), dim=-1)

    @cached_property
    def normalised_keys(self) -> Tensor:
        """[N, dk] float32 unit-length key rows (PruMerge merging: M×N similarity, M kept)."""
        self.require("keys", method="key similarity")
        return F.normalize(self.keys.float(), dim=-1)


@dataclass(frozen=True, eq=False)
class Reduction:
    """What a reducer did, with every stage the UI draws.

    kept:   [M]  LongTensor of patch indices (0..N-1), unique, in the order their tokens appear
    tokens: [M', d] what the projector / LLM receives; tokens[i] belongs to kept[i] for i < M; a PruMerge
            merge appends one aggregate token of the pruned patches last (M' = M + 1, `extra_token=True`)
            when at least one patch was pruned
    stages: ordered funnel of counts, e.g. {"tokens": 576, "outliers": 31, "merged": 32}
    Method-specific fields are None when they do not apply.
    """

    method: str
    kept: Tensor
    tokens: Tensor
    grid: tuple[int, int]
    stages: dict[str, int]
    extra_token: bool = False
    # attention-based (PruMerge, top-attention)
    attn: Tensor | None = None  # [N] CLS attention used
    q1: float | None = None
    q3: float | None = None
    fence: float | None = None  # Q3 + k·IQR
    outliers: Tensor | None = None  # [K] indices above the fence, descending attention
    samples: Tensor | None = None  # [S] PruMerge+ uniform samples appended after the outliers
    merge_index: Tensor | None = None  # [M, k] neighbour patch indices merged into kept[i]
    merge_weight: Tensor | None = None  # [M, k] their weights (CLS attention)
    # PAR
    relevance: Tensor | None = None  # [N] r in [0, 1]
    hybrid: Tensor | None = None  # [N] h = α r + (1 − α) R_c
    labels: Tensor | None = None  # [N] connected-component label per patch
    n_clusters: int | None = None
    retrieved: Tensor | None = None  # [N] bool
    routed: Tensor | None = None  # [N] bool

    @property
    def n_tokens(self) -> int:
        """N, the number of patch tokens before reduction."""
        return self.grid[0] * self.grid[1]

    @property
    def n_kept(self) -> int:
        """M', the number of visual tokens the LLM receives."""
        return int(self.tokens.shape[0])

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
            "extra_token": self.extra_token,
            "compression": 1.0 - m / n,
            "stages": dict(self.stages),
        }
        for name in ("q1", "q3", "fence", "n_clusters"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


@dataclass(frozen=True)
class RegistryEntry:
    """A registered reducer: call it like the function it wraps, `REDUCERS[name](vt, params)`.

    params: the frozen parameter dataclass (its slider fields drive the UI); `params=None` uses its defaults.
    needs:  the `VisualTokens` fields the method reads (the UI greys out what it cannot run).
    """

    fn: Callable[[VisualTokens, object], Reduction]
    params: type
    description: str
    needs: tuple[str, ...] = ()

    def __call__(self, vt: VisualTokens, params=None) -> Reduction:
        return self.fn(vt, self.params() if params is None else params)
