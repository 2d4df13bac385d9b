"""Slow, obviously-correct reference implementations, written straight from docs/methods.md.

Python loops over tokens, float64 numpy, no cleverness: these are what `reducers/` is checked against
(tests/test_reducers.py) and timed against (bench/reducers.py). They return plain Python / numpy values.

One deliberate shared piece: PAR's feature similarity S is the same float32 product `reducers` uses
(`feature_similarity` below). Comparing thresholds (S ≥ γ, S ≥ δ) on an independent float64 product would
flip the rare pair whose similarity lies within float32 rounding of the threshold and make an exact-equality
test flaky; that one product is checked separately against a float64 loop (`cosine_loop`).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

from reducers.inllm import ToyLLM


def as_f64(x) -> np.ndarray:
    return x.detach().double().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def unit(v: np.ndarray) -> np.ndarray:
    norm = math.sqrt(float(v @ v))
    return v / norm if norm > 0 else v * 0.0


def cosine_loop(x) -> np.ndarray:
    """[N, N] cosine similarity of rows, one row at a time in float64."""
    x = as_f64(x)
    rows = [unit(row) for row in x]
    return np.array([[float(a @ b) for b in rows] for a in rows])


def feature_similarity(features: torch.Tensor) -> np.ndarray:
    """The float32 cosine-similarity product (see module docstring), as float64 numpy."""
    xn = F.normalize(features.float(), dim=-1)
    return (xn @ xn.T).double().cpu().numpy()


# --------------------------------------------------------------------------------------------- PruMerge
def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's / torch's default)."""
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def prumerge(features, keys, attn, iqr_multiplier=1.5, plus=False, merge=True, neighbours=32) -> dict:
    """Steps 2–4 of docs/methods.md PruMerge; `attn` is a, the CLS→patch attention."""
    a = [float(v) for v in as_f64(attn)]
    n = len(a)
    q1, q3 = percentile(a, 0.25), percentile(a, 0.75)
    fence = q3 + iqr_multiplier * (q3 - q1)
    outliers = [i for i in range(n) if a[i] > fence]
    outliers.sort(key=lambda i: (-a[i], i))  # descending attention
    if not outliers:  # bug fix: keep at least the argmax patch (first one on ties)
        outliers = [min(range(n), key=lambda i: (-a[i], i))]
    kept = list(outliers)
    samples = []
    if plus:
        r = len(outliers) / n
        s = max(1, int(int(1 / r) / 3))
        for j in range(0, n - 1, s):
            if j not in outliers:
                samples.append(j)
        kept += samples
    x = as_f64(features)
    if not merge:
        tokens = np.array([x[i] for i in kept])
        return dict(q1=q1, q3=q3, fence=fence, outliers=outliers, samples=samples, kept=kept, tokens=tokens)
    kn = np.array([unit(row) for row in as_f64(keys)])
    k = min(neighbours, n - 1)
    merged, neighbour_sets = [], []
    for i in kept:  # one kept token at a time, as the official code does
        sim = kn @ kn[i]
        others = [j for j in range(n) if j != i]
        nearest = sorted(others, key=lambda j: -sim[j])[:k]
        token = x[i].copy()
        for j in nearest:
            token += a[j] * x[j]
        merged.append(token)
        neighbour_sets.append(set(nearest))
    kept_set = set(kept)
    pruned = [j for j in range(n) if j not in kept_set]
    extra = []
    if pruned:  # one aggregate of the pruned patches; none if nothing was pruned (an empty sum is no token)
        total = np.zeros(x.shape[1])
        for j in pruned:
            total += a[j] * x[j]
        extra = [total]
    tokens = np.array(merged + extra)
    return dict(
        q1=q1, q3=q3, fence=fence, outliers=outliers, samples=samples, kept=kept, tokens=tokens,
        neighbours=neighbour_sets,
    )


# --------------------------------------------------------------------------------------------- PAR
def grid_neighbours(i: int, grid: tuple[int, int]) -> list[int]:
    h, w = grid
    row, col = divmod(i, w)
    out = []
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        rr, cc = row + dr, col + dc
        if 0 <= rr < h and 0 <= cc < w:
            out.append(rr * w + cc)
    return out


def connected_components(sim: np.ndarray, threshold: float, grid=None) -> tuple[int, list[int]]:
    """Depth-first search over the graph {i–j : S_ij ≥ threshold} (4-neighbour edges only if `grid`)."""
    n = sim.shape[0]
    labels = np.full(n, -1)
    count = 0
    for start in range(n):
        if labels[start] >= 0:
            continue
        labels[start] = count
        stack = [start]
        while stack:
            i = stack.pop()
            if grid is not None:
                linked = [j for j in grid_neighbours(i, grid) if sim[i, j] >= threshold and labels[j] < 0]
            else:  # the row test is vectorised; the walk is one token at a time
                linked = list(np.flatnonzero((sim[i] >= threshold) & (labels < 0)))
            for j in linked:
                labels[j] = count
                stack.append(j)
        count += 1
    return count, [int(c) for c in labels]


def same_partition(a, b) -> bool:
    """Two labelings describe the same clusters (label names may differ)."""
    pairs = {}
    back = {}
    for x, y in zip(list(a), list(b)):
        x, y = int(x), int(y)
        if pairs.setdefault(x, y) != y or back.setdefault(y, x) != x:
            return False
    return True


def par(features, joint, query, grid, tau=0.3, delta=0.9, cluster_threshold=0.8, retrieval_ratio=0.5,
        alpha=0.5, spatial=False, sim=None) -> dict:
    """Steps 2–7 of docs/methods.md PAR."""
    n = features.shape[0]
    q = unit(as_f64(query))
    joint = as_f64(joint)
    s = [float(unit(joint[i]) @ q) for i in range(n)]
    lo, hi = min(s), max(s)
    r = [(v - lo) / (hi - lo) if hi > lo else 0.0 for v in s]
    S = feature_similarity(features) if sim is None else sim
    count, labels = connected_components(S, cluster_threshold, grid if spatial else None)
    total, size = [0.0] * count, [0] * count
    for i in range(n):
        total[labels[i]] += r[i]
        size[labels[i]] += 1
    R = [total[c] / size[c] for c in range(count)]
    h = [alpha * r[i] + (1 - alpha) * R[labels[i]] for i in range(n)]
    k = math.ceil(Fraction(repr(retrieval_ratio)) * n)  # ⌈ρ·N⌉ on the decimal the user set
    by_h = sorted(range(n), key=lambda i: (-h[i], i))  # ties: lower raster index first
    retrieved = by_h[:k]
    routed = [i for i in retrieved if h[i] >= tau]
    order = sorted(routed, key=lambda i: (-r[i], i))
    kept = []
    for i in order:
        if all(S[i, j] < delta for j in kept):
            kept.append(i)
    if not kept:
        kept = [by_h[0]]
        if by_h[0] not in routed:
            routed.append(by_h[0])
    kept.sort()
    tokens = as_f64(features)[kept]
    return dict(
        relevance=r, labels=labels, n_clusters=count, hybrid=h, retrieved=sorted(retrieved),
        routed=sorted(routed), kept=kept, tokens=tokens,
    )


# --------------------------------------------------------------------------------------------- VisionZip
def visionzip_split(budget: int, n: int, share: float = 54 / 64, cls_token: bool = True) -> tuple[int, int, int]:
    """(D dominant tokens incl. the CLS token, CLS handed 0/1, C contextual): M = min(budget, N),
    D = round-half-up(M·share) kept within [1, M], C = M − D; the CLS token takes a slot only when D ≥ 2."""
    m = min(budget, n)
    dominant = math.floor(m * share + 0.5)
    dominant = max(1, min(m, dominant))
    with_cls = 1 if (cls_token and dominant >= 2) else 0
    return dominant, with_cls, m - dominant


def visionzip(features, attn, keys, cls_feature=None, budget=64, share=54 / 64, cls_token=True, prefer=None,
              tie=0.0) -> dict:
    """VisionZip as restated in reducers/visionzip.py, one token at a time in float64.

    `attn` the feature layer's head-summed CLS attention, `keys` its head-mean keys. A merged patch joins its most
    key-similar target (the first on ties). Near-ties: float32 rounding (~1e-7) can decide a tie within `tie` of
    the best either way, so where `prefer` (one target position per merged patch, e.g. a float32 run's) names a
    target within `tie` of the best, that one is taken; any other preference is ignored. Also returns, for every
    merged patch, the margin between its best and second-best similarity."""
    x = as_f64(features)
    a = [float(v) for v in as_f64(attn)]
    n = len(a)
    dominant, with_cls, c = visionzip_split(budget, n, share, cls_token)
    by_attention = sorted(range(n), key=lambda i: (-a[i], i))  # descending attention, lowest index on ties
    kept = sorted(by_attention[: dominant - with_cls])
    remaining = [i for i in range(n) if i not in kept]
    tokens = [x[i] for i in kept]
    if with_cls:  # the CLS token leads, as the official LLaVA-1.5 code hands it: [CLS, patches, contextual]
        tokens.insert(0, as_f64(cls_feature))
    targets, members, joined, margins = [], [], [], []
    if c > 0:
        step = max(1, len(remaining) // c)
        targets = [remaining[k] for k in range(0, len(remaining), step)][:c]
        kn = [unit(row) for row in as_f64(keys)]
        members = [i for i in remaining if i not in targets]
        groups = {t: [] for t in targets}
        for k, i in enumerate(members):
            sims = [float(kn[i] @ kn[t]) for t in targets]
            best = max(range(c), key=lambda j: (sims[j], -j))  # the first target on ties
            if prefer is not None and sims[prefer[k]] >= sims[best] - tie:
                best = prefer[k]
            groups[targets[best]].append(i)
            joined.append(best)
            others = sorted(sims, reverse=True)
            margins.append(others[0] - others[1] if c > 1 else math.inf)
        for t in targets:
            token = x[t].copy()
            if groups[t]:
                token = token + sum(x[i] for i in groups[t]) / len(groups[t])
            tokens.append(token)
    return dict(kept=kept, tokens=np.array(tokens), dominant=dominant, cls=with_cls, contextual=c, targets=targets,
                members=members, joined=joined, margins=margins)


# --------------------------------------------------------------------------------------------- DivPrune
def projected_distance(projected) -> np.ndarray:
    """1 − the float32 cosine product (as reducers computes it; see the module docstring), as float64 numpy."""
    xn = F.normalize(projected.float(), dim=-1)
    return (1.0 - xn @ xn.T).double().cpu().numpy()


def divprune(projected, budget: int, dist=None) -> dict:
    """Greedy max–min selection, recomputing every minimum from scratch at every step.

    First the token whose nearest OTHER token is farthest; then, while fewer than M = min(budget, N) are
    chosen, the unchosen token whose smallest distance to the chosen ones is largest; lowest index on ties.
    Returns the order of choice, the kept indices ascending and each step's winning score."""
    d = projected_distance(projected) if dist is None else dist
    n = d.shape[0]
    m = min(budget, n)
    chosen, scores = [], []
    while len(chosen) < m:
        best, best_score = None, None
        for j in range(n):
            if j in chosen:
                continue
            if chosen:
                score = min(float(d[s, j]) for s in chosen)
            else:
                others = [float(d[i, j]) for i in range(n) if i != j]
                score = min(others) if others else math.inf
            if best is None or score > best_score:
                best, best_score = j, score
        chosen.append(best)
        scores.append(best_score)
    return dict(order=chosen, kept=sorted(chosen), scores=scores)


# --------------------------------------------------------------------------------------------- inputs
# The inputs the reference tests run on: (grid, feature width d, seed) — LLaVA-1.5's 576 patches (24×24) at two
# widths, 2880 patches on 48×60, and tiny and degenerate grids.
CASES = [
    ((24, 24), 64, 0),
    ((24, 24), 64, 1),
    ((24, 24), 1024, 2),
    ((48, 60), 64, 3),
    ((4, 4), 64, 4),
    ((3, 7), 16, 5),
    ((1, 1), 8, 6),
]


def synthetic(grid=(24, 24), d=64, e=32, seed=0, centres=8, dtype=torch.float32, device="cpu", layers=32, p=None):
    """Random but structured inputs for `reducers.VisualTokens`: spatially coherent regions of similar
    features (so clusters and redundancy are non-trivial at the default thresholds), keys correlated with
    features, a heavy-tailed softmax CLS attention (so the IQR fence finds outliers), a joint space correlated
    with features and a unit query; for VisionZip the feature layer's head-summed attention (16 heads) and
    head-mean keys (d/16 wide, as CLIP-L's 64 of 1024) and a CLS row; for DivPrune projected tokens (p wide,
    default 4d as LLaVA-1.5-7B's 4096 of 1024) from a one-layer GELU "projector"; for FastV the attention image
    tokens receive in each of `layers` LLM layers (a heavy-tailed share of each row, last-token and mean rows).
    Each group is drawn after the older fields, so those are unchanged. Returns a dict of tensors (keyword
    arguments of VisualTokens)."""
    gen = torch.Generator().manual_seed(seed)
    h, w = grid
    n = h * w
    coarse = torch.randint(centres, (h // 4 + 1, w // 4 + 1), generator=gen)
    region = coarse[torch.arange(h) // 4][:, torch.arange(w) // 4].flatten()  # [N]
    centre = torch.randn(centres, d, generator=gen)
    spread = 0.3 + 0.4 * torch.rand(n, 1, generator=gen)
    features = centre[region] + spread * torch.randn(n, d, generator=gen)
    keys = features @ torch.randn(d, d, generator=gen) / math.sqrt(d) + 0.5 * torch.randn(n, d, generator=gen)
    spikes = 3.0 * (torch.rand(n, generator=gen) < 0.04)  # a few strongly attended patches, as in CLIP
    attn = torch.softmax(0.7 * torch.randn(n, generator=gen) + spikes, dim=0)
    joint = features @ torch.randn(d, e, generator=gen) / math.sqrt(d) + 0.5 * torch.randn(n, e, generator=gen)
    query = F.normalize(joint[int(torch.randint(n, (1,), generator=gen))] + torch.randn(e, generator=gen), dim=0)
    heads, dk, p = 16, max(4, d // 16), p or 4 * d
    layer_spikes = 3.0 * (torch.rand(n, generator=gen) < 0.05)
    layer_attn = heads * torch.softmax(0.7 * torch.randn(n, generator=gen) + layer_spikes, dim=0)
    layer_keys = features @ torch.randn(d, dk, generator=gen) / math.sqrt(d)
    layer_keys = layer_keys + 0.5 * torch.randn(n, dk, generator=gen)
    cls_feature = features.mean(0) + torch.randn(d, generator=gen)
    projected = F.gelu(features @ torch.randn(d, p, generator=gen) / math.sqrt(d))
    projected = projected + 0.1 * torch.randn(n, p, generator=gen)
    # drawn last, so that the other fields are the same as before lm_attn existed
    sinks = 4.0 * (torch.rand(layers, 1, n, generator=gen) < 0.02)  # a few heavily attended image tokens per layer
    share = 0.1 + 0.4 * torch.rand(layers, 2, 1, generator=gen)  # the part of each row that falls on the image
    lm_attn = share * torch.softmax(torch.randn(layers, 2, n, generator=gen) + sinks, dim=-1)  # [L, 2, N]
    out = dict(features=features, keys=keys, cls_attn=attn, joint=joint, query=query, feature_layer_attn=layer_attn,
               feature_layer_keys=layer_keys, cls_feature=cls_feature, projected=projected, lm_attn=lm_attn)
    out = {k: v.to(dtype=dtype, device=device) for k, v in out.items()}
    # SparseVLM / PyramidDrop: a deterministic toy LLM runs their staged plans (reducers.inllm.ToyLLM)
    return dict(out, grid=grid, lm_probe=ToyLLM(features, layers, seed=seed).run)


# --------------------------------------------------------------------------------------------- baselines
def identity(features) -> dict:
    x = as_f64(features)
    kept = list(range(x.shape[0]))
    return dict(kept=kept, tokens=x[kept])


def top_attention(features, attn, budget: int) -> dict:
    """The `budget` most attended patches, in raster order."""
    a = [float(v) for v in as_f64(attn)]
    kept = sorted(sorted(range(len(a)), key=lambda i: (-a[i], i))[: min(budget, len(a))])
    return dict(kept=kept, tokens=as_f64(features)[kept])


def nearest_grid(grid, budget: int) -> tuple[int, int]:
    """Every h'×w' sub-grid tried: the one whose size is nearest the budget (reducers' definition: among
    equally near sizes the one closest to the grid's aspect, then the fewest rows)."""
    h, w = grid
    budget = min(budget, h * w)
    best = None
    for gh in range(1, h + 1):
        for gw in range(1, w + 1):
            score = (abs(gh * gw - budget), abs(math.log(gh / gw) - math.log(h / w)), gh)
            if best is None or score < best[0]:
                best = (score, gh, gw)
    return best[1], best[2]


def uniform(features, grid, budget: int) -> dict:
    """The centre patch of each cell of the h'×w' sub-grid whose size is nearest the budget."""
    h, w = grid
    gh, gw = nearest_grid(grid, budget)
    kept = []
    for row_cell in range(gh):
        for col_cell in range(gw):
            row = math.floor((row_cell + 0.5) * h / gh)
            col = math.floor((col_cell + 0.5) * w / gw)
            kept.append(row * w + col)
    return dict(kept=kept, tokens=as_f64(features)[kept], shape=(gh, gw))


# --------------------------------------------------------------------------------------------- ToMe
def tome(features, keys, budget: int, track_keys: bool = True, rounds: int = 1) -> dict:
    """Bipartite soft matching, one token at a time (reducers/tome.py's docstring, from the ToMe paper).

    Each token of the current sequence is a dict: rep (the patch never merged away), members (its patches)
    and key (the sum of its patches' keys; the cosine ignores the scale, so this is the size-weighted mean's
    direction). Returns kept, tokens [M, d], groups [N], group_weight [N] and steps (r of each step).
    `track_keys=False` (a deliberately wrong variant, for tests) leaves each B token its own key."""
    x, k = as_f64(features), as_f64(keys)
    n = x.shape[0]
    seq = [dict(rep=i, members=[i], key=k[i].copy()) for i in range(n)]
    budget = min(budget, n)
    per_round = max(1, math.ceil((n - budget) / rounds))
    steps = []
    while len(seq) > budget:
        a_side, b_side = seq[0::2], seq[1::2]
        r = min(per_round, len(a_side), len(seq) - budget)
        b_units = [unit(b["key"]) for b in b_side]
        edges = []
        for ai, a in enumerate(a_side):
            a_unit = unit(a["key"])
            best, best_j = -math.inf, None
            for bj, b_unit in enumerate(b_units):
                sim = float(a_unit @ b_unit)
                if sim > best:  # strictly greater: the first (lowest B position) maximum wins
                    best, best_j = sim, bj
            edges.append((best, ai, best_j))
        edges.sort(key=lambda e: (-e[0], e[1]))  # most similar first; ties: lower A position
        gone = set()
        for _, ai, bj in edges[:r]:
            b_side[bj]["members"] += a_side[ai]["members"]
            if track_keys:
                b_side[bj]["key"] = b_side[bj]["key"] + a_side[ai]["key"]
            gone.add(a_side[ai]["rep"])
        seq = [t for t in seq if t["rep"] not in gone]
        steps.append(r)
    groups, weight = [-1] * n, [0.0] * n
    tokens = []
    for i, t in enumerate(seq):
        total = np.zeros(x.shape[1])
        for p in t["members"]:
            total += x[p]
            groups[p] = i
            weight[p] = 1.0 / len(t["members"])
        tokens.append(total / len(t["members"]))
    return dict(kept=[t["rep"] for t in seq], tokens=np.array(tokens), groups=groups, group_weight=weight,
                steps=steps)


# --------------------------------------------------------------------------------------------- pooling
def pool(features, grid, budget: int) -> dict:
    """Mean feature of each cell of the nearest h'×w' grid; cell rows [⌊i·h/h'⌋, ⌊(i+1)·h/h'⌋), columns alike;
    kept = each cell's middle patch lo + ⌊(hi − lo)/2⌋."""
    x = as_f64(features)
    h, w = grid
    gh, gw = nearest_grid(grid, budget)
    kept, tokens = [], []
    groups, weight = [-1] * (h * w), [0.0] * (h * w)
    for i in range(gh):
        r0, r1 = i * h // gh, (i + 1) * h // gh
        for j in range(gw):
            c0, c1 = j * w // gw, (j + 1) * w // gw
            cell = [row * w + col for row in range(r0, r1) for col in range(c0, c1)]
            total = np.zeros(x.shape[1])
            for p in cell:
                total += x[p]
                groups[p] = len(tokens)
                weight[p] = 1.0 / len(cell)
            tokens.append(total / len(cell))
            kept.append((r0 + (r1 - r0) // 2) * w + c0 + (c1 - c0) // 2)
    return dict(kept=kept, tokens=np.array(tokens), groups=groups, group_weight=weight, shape=(gh, gw))


# --------------------------------------------------------------------------------------------- FastV
def fastv(features, lm_attn, layer: int, budget: int, rank: str = "last") -> dict:
    """The `budget` image tokens with the most attention in LLM layer K−1 (ties: lowest index), raster order."""
    a = [float(v) for v in as_f64(lm_attn[layer - 1, ("last", "mean").index(rank)])]
    kept = sorted(sorted(range(len(a)), key=lambda i: (-a[i], i))[: min(budget, len(a))])
    return dict(kept=kept, tokens=as_f64(features)[kept], score=a)


# --------------------------------------------------------------------------------------------- VisPruner
def vispruner(features, attn, budget: int, important_ratio: float = 0.5, official_count: bool = False,
              sim=None) -> dict:
    """VisPruner as its official `encode_images` computes it (see reducers/vispruner.py), one token at a time:
    the int(T·ρ) most attended patches, then rounds over the residual list (descending attention): a = even
    positions, b = odd; each a's largest cosine to any b (float64); the min(8, |R| − T_div) a's with the largest
    one leave (ties: earliest position); residual = remaining a's by descending score, then the b's. The official
    gather's odd-count quirk is modelled by `official_count` (one a too many leaves where ⌊|R|/2⌋ − r = 0 with
    |R| odd); crashes are not modelled (the exact rule continues). The cosine is the shared float32 product
    (module docstring): an independent float64 one would reorder near-ties, and the order decides later rounds."""
    a_ = [float(v) for v in as_f64(attn)]
    n = len(a_)
    t = min(budget, n)
    t_imp = int(t * important_ratio)
    t_div = t - t_imp
    order = sorted(range(n), key=lambda i: (-a_[i], i))
    important, residual = order[:t_imp], order[t_imp:]
    S = feature_similarity(features) if sim is None else sim
    rounds = 0
    if t_div == 0:
        residual = []
    crashed = False
    while residual:
        r = min(8, len(residual) - t_div)
        if r <= 0:
            break
        a_side, b_side = residual[0::2], residual[1::2]
        scores = [max(float(S[i, j]) for j in b_side) for i in a_side]
        by_score = sorted(range(len(a_side)), key=lambda k: (-scores[k], k))
        keep = max(0, len(a_side) - r)
        if official_count and not crashed:
            expand = len(residual) // 2 - r
            width = 1 if expand == -1 else expand
            if expand < -1 or (width not in (keep, 1) and not (keep == 1 and width == 0)):
                crashed = True
            elif keep == 1 and width == 0:
                keep = 0
        residual = [a_side[k] for k in by_score[len(a_side) - keep:]] + b_side
        rounds += 1
    kept = sorted(important + residual)
    return dict(kept=kept, tokens=as_f64(features)[kept], important=important, rounds=rounds)


# --------------------------------------------------------------------------------------------- CDPruner
def projected_similarity(projected) -> np.ndarray:
    """The float32 cosine product of the projected rows (as reducers computes it), as float64 numpy."""
    xn = F.normalize(projected.float(), dim=-1)
    return (xn @ xn.T).double().cpu().numpy()


def cdpruner_relevance(joint, query, negate: bool = True, exp_theta: float | None = None) -> list[float]:
    """The official relevance, one patch at a time: (±cos(J_i, q) − min + 1e−6) / (max − min) (1 when constant),
    then exp(θ/(2(1−θ))·r) when `exp_theta` is given."""
    q = unit(as_f64(query))
    s = [float(unit(row) @ q) for row in as_f64(joint)]
    rel = [-v for v in s] if negate else s
    lo, hi = min(rel), max(rel)
    rel = [(v - lo + 1e-6) / (hi - lo) if hi > lo else 1.0 for v in rel]
    if exp_theta is not None:
        rel = [math.exp(exp_theta / (2 * (1 - exp_theta)) * v) for v in rel]
    return rel


def cdpruner(projected, joint, query, budget: int, negate: bool = True, exp_theta: float | None = None, sim=None,
             prefer=None, tie: float = 0.0, hint=None, rank_eps: float = 1e-5) -> dict:
    """CDPruner's greedy conditional DPP as its official `encode_images` computes it, in float64: kernel
    L_ij = r_i S_ij r_j; d²_i = L_ii; each step the unchosen j with the largest d²_j (the first on ties),
    e = (L_j − Σ_t c_t[j] c_t) / √d²_j, d² −= e². Past the numerical rank (best d² ≤ rank_eps · max L_ii) the rest
    by descending L_ii. Near-ties: float32 rounding can decide a choice within `tie` · max L_ii either way, so where
    `prefer` (the reducer's order) names a token within that of the best, it is taken; likewise `hint` (the
    reducer's first pick past the rank) decides a best gain within that of the rank threshold."""
    S = projected_similarity(projected) if sim is None else sim
    r = cdpruner_relevance(joint, query, negate, exp_theta)
    n = len(r)
    m = min(budget, n)
    L = np.array([[r[i] * S[i, j] * r[j] for j in range(n)] for i in range(n)])
    diag = [float(L[i, i]) for i in range(n)]
    scale = max(diag)
    floor, slack = rank_eps * scale, tie * scale
    d2 = list(diag)
    cis = []
    chosen, gains = [], []
    exhausted = None
    while len(chosen) < m:
        step = len(chosen)
        free = [j for j in range(n) if j not in chosen]
        best = max(free, key=lambda j: (d2[j], -j))
        if prefer is not None and d2[prefer[step]] >= d2[best] - slack and prefer[step] in free:
            best = prefer[step]
        past = d2[best] <= floor
        if hint is not None and abs(d2[best] - floor) <= slack:
            past = step >= hint
        if past:
            exhausted = step
            break
        g = max(d2[best], 0.0)
        e = (L[best] - sum((c[best] * c for c in cis), np.zeros(n))) / math.sqrt(g)
        cis.append(e)
        d2 = [d2[k] - e[k] * e[k] for k in range(n)]
        chosen.append(best)
        gains.append(g)
    if exhausted is not None:
        while len(chosen) < m:
            step = len(chosen)
            free = [j for j in range(n) if j not in chosen]
            best = max(free, key=lambda j: (diag[j], -j))
            if prefer is not None and prefer[step] in free and diag[prefer[step]] >= diag[best] - slack:
                best = prefer[step]
            chosen.append(best)
    return dict(order=chosen, kept=sorted(chosen), gains=gains, exhausted=exhausted, relevance=r)


# --------------------------------------------------------------------------------------------- DART
def dart_official(keys, states, image_start: int, n: int, budget: int, pivot_image: int = 4, pivot_text: int = 4,
                  official_count: bool = False) -> dict:
    """DART's `get_retained_image_token` (ZichenWen1/DART @ 5a19452, LLaVA-1.5), one token at a time in float64:
    `keys` [T, D] layer K−1's keys (heads concatenated), `states` [T, H] layer K−1's outputs through the final
    norm, the image at sequence positions image_start…image_start+n−1, the text after it to the end. Pivots: topk
    L1 norms (lowest index on ties) of the image rows and of the rows after the image; TOKEN_TOPK = T // (image +
    text pivots) (official); exact (reducers/dart.py): the (min(T, n) − k_img) tokens shared over the pivots in
    their Python-set order, the first ones one more. Each pivot, in `list(set(image_indices + query_indices))`
    order, takes its count of the candidates `list(valid)` with the most negative cosine (earliest on ties).
    Returns kept image offsets (sorted), the pivot positions in order, and owner positions per image offset."""
    k, x = as_f64(keys), as_f64(states)
    t = min(budget, n)
    k_img = min(pivot_image, n if official_count else t)
    k_txt = min(pivot_text, k.shape[0] - image_start - n)
    l1 = [float(sum(abs(v) for v in row)) for row in k]
    img = sorted(range(image_start, image_start + n), key=lambda i: (-l1[i], i))[:k_img]
    txt = sorted(range(image_start + n, k.shape[0]), key=lambda i: (-l1[i], i))[:k_txt]
    indices_set = set(img + txt)
    order = list(indices_set)
    if official_count:
        counts = [budget // (pivot_image + pivot_text)] * len(order)
    else:
        rest = t - k_img
        counts = [rest // len(order) + (1 if i < rest % len(order) else 0) for i in range(len(order))]
    valid = set(range(image_start, image_start + n)) - set(img)
    owner = {i: i for i in img}
    for item, want in zip(order, counts):
        valid_list = list(valid)
        take = min(want, len(valid_list))
        if take <= 0:
            continue
        cos = [float(x[item] @ x[j] / max(math.sqrt(float(x[item] @ x[item]) * float(x[j] @ x[j])), 1e-8))
               for j in valid_list]
        top = sorted(range(len(valid_list)), key=lambda q: (cos[q], q))[:take]
        real = [valid_list[q] for q in top]
        indices_set.update(real)
        for j in real:
            owner[j] = item
        valid.difference_update(real)
    indices_set.difference_update(txt)
    kept = sorted(i - image_start for i in indices_set)
    return dict(kept=kept, order=order, owner=[owner.get(image_start + i, -1) for i in range(n)], counts=counts)


# --------------------------------------------------------------------------------------------- in the LLM
def _ranked(score, idx) -> list[int]:
    """idx sorted by descending score, ties to the lowest index (topk with a deterministic tie rule)."""
    return sorted(idx, key=lambda i: (-score[i], i))


def sparsevlm_raters(visual, text) -> list[int]:
    """SparseVLM v1.5 (`LlamaDynamicvitModel.forward`): m_v_t = softmax over text of v_t @ t_tᵀ, mean over the
    visual rows; raters = where(m > m.mean()) (all text tokens when none is above)."""
    v, t = as_f64(visual), as_f64(text)
    m = np.zeros(t.shape[0])
    for row in v:
        logits = np.array([float(row @ tj) for tj in t])
        e = np.exp(logits - logits.max())
        m += e / e.sum()
    m /= v.shape[0]
    raters = [j for j in range(len(m)) if m[j] > m.mean()]
    return raters or list(range(len(m)))


def cluster_and_merge_groups(x, cluster_num: int) -> list[list[int]]:
    """`utils.cluster_and_merge`, one token at a time in float64 and without the tie-breaking noise: DPC-kNN
    density peaks; the groups (row offsets of x, ascending) in centre order."""
    x = as_f64(x)
    m, c = x.shape
    dist = [[math.sqrt(float(((x[i] - x[j]) ** 2).sum())) / math.sqrt(c) for j in range(m)] for i in range(m)]
    density = [math.exp(-sum(d * d for d in sorted(dist[i])[:cluster_num]) / cluster_num) for i in range(m)]
    dmax = max(max(row) for row in dist)
    parent = [min([dist[i][j] if density[j] > density[i] else dmax for j in range(m)]) for i in range(m)]
    score = [parent[i] * density[i] for i in range(m)]
    centres = _ranked(score, range(m))[:cluster_num]
    assign = []
    for i in range(m):
        d = [dist[ctr][i] for ctr in centres]
        assign.append(d.index(min(d)))
    for k, ctr in enumerate(centres):
        assign[ctr] = k
    return [[i for i in range(m) if assign[i] == k] for k in range(cluster_num)]


def sparsevlm_staged(toy, layers=(2, 6, 15), targets=(300, 200, 110)) -> dict:
    """SparseVLM v1.5's three stages, written from `LlamaDynamicvitModel.forward` / `attn_postprocess_topk` /
    `cluster_and_merge`, on `reducers.inllm.ToyLLM` (its hidden states are the token vectors): per stage the
    ids present, kept and recycled (id groups, in the order the code appends them)."""
    x = toy.features.detach().float().cpu()
    n = x.shape[0]
    ids = list(range(n))
    raters = sparsevlm_raters(x, toy.text)
    made, stages = n, []
    for s, layer in enumerate(layers):
        rows = toy.rows(layer, x).double().numpy()
        relation = [float(np.mean([rows[r][i] for r in raters])) for i in range(len(ids))]
        k = min(targets[s], len(ids) - 1)
        keep = sorted(_ranked(relation, range(len(ids)))[:k])
        pruned = [i for i in range(len(ids)) if i not in set(keep)]
        groups = []
        if pruned:
            best = _ranked(relation, pruned)[: int(len(pruned) * 0.3) + 1]
            cluster_num = int(len(best) / 10) + 1
            groups = [[best[i] for i in g] for g in cluster_and_merge_groups(x[best], cluster_num)]
        merged = [x[g].sum(0) / (len(g) + 1e-6) for g in groups]
        stages.append(dict(present=list(ids), keep=[ids[i] for i in keep],
                           merge=[[ids[i] for i in g] for g in groups]))
        x = torch.cat([x[keep]] + [v[None] for v in merged]) if merged else x[keep]
        ids = [ids[i] for i in keep] + list(range(made, made + len(groups)))
        made += len(groups)
    return dict(raters=raters, stages=stages, final=ids)


def pyramiddrop_staged(toy, layers=(8, 16, 24), ratio=0.5) -> dict:
    """PyramidDrop, written from `pdrop_forward` / `pdrop_rank_drop` on `reducers.inllm.ToyLLM`: before each
    listed layer the last instruction token's attention ranks; keep int(N·λ^(s+1)) (at least one) in order."""
    x = toy.features.detach().float().cpu()
    n = x.shape[0]
    ids = list(range(n))
    stages = []
    for s, layer in enumerate(layers):
        score = toy.rows(layer, x)[-1].double().tolist()  # the last instruction token's row
        keep_length = max(1, int(n * ratio ** (s + 1)))
        top = sorted(_ranked(score, range(len(ids)))[:keep_length])
        stages.append(dict(present=list(ids), keep=[ids[i] for i in top], merge=[]))
        x = x[top]
        ids = [ids[i] for i in top]
    return dict(stages=stages, final=ids)
