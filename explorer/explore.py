"""From a cached encode and the settings to pictures and numbers — the work of one slider move.

No gradio and no model here: `service.py` supplies the encode, the query and the `VisualTokens`, `ui.py` wires
these functions to components, `bench/latency.py` times them in-process. A slider move runs one reducer on
memoised per-image quantities and redraws; the sweep and the method comparison follow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from reducers import RegistryEntry, Reduction, VisualTokens
from reducers.inllm import accounting, llm_schedule

from .backend.cost import lm_dims, prefill_flops_of
from .pictures import draw, plots
from .settings import Settings

SWEEP_POINTS = 41


# --------------------------------------------------------------------------------------------------
# Pictures of one reduction
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pictures:
    kept: np.ndarray  # retained patches on the view
    kept_caption: str
    groups: np.ndarray | None  # PAR clusters, merge groups, or None when the method has neither
    groups_caption: str
    heatmap: np.ndarray  # the per-patch score the method reads, with a colour bar
    heatmap_caption: str


def heat_values(vt: VisualTokens, red: Reduction, attention: str) -> tuple[np.ndarray | None, str]:
    """The per-patch score a method reads, for the heatmap: PAR's relevance r, FastV's LLM attention, or the
    CLS→patch attention (of the chosen mode); a method with a trace says itself (`Trace.heat`)."""
    heat = red.trace.heat() if red.trace is not None else None
    if heat is not None:
        return heat[1].float().cpu().numpy(), heat[0]
    if red.relevance is not None:
        return red.relevance.float().cpu().numpy(), "PAR relevance r (min–max cos(patch, query) per image)"
    if red.layer and red.attn is not None:
        return red.attn.float().cpu().numpy(), f"LLM attention to each patch at layer {red.layer - 1} (FastV's ranking)"
    if vt.cls_attn is not None:
        return vt.cls_attn.float().cpu().numpy(), f"CLS → patch attention ({attention})"
    return None, "No per-patch score for this tower"


def pictures(canvas: draw.Canvas, vt: VisualTokens, red: Reduction, attention: str, label: str,
             points: np.ndarray | None = None) -> Pictures:
    """The three on-image pictures of a reduction, aligned with the patches the model saw. `canvas` is the
    encode's view on the reduction's grid (re-used across moves); `points` the patches PAR's query points at."""
    kept = red.kept_mask.cpu()
    kept_img = canvas.kept(kept, samples=red.samples, points=points)
    kept_caption = f"{label}: {red.kept.numel()} of {red.n_tokens} patches kept (bright, amber outline)"
    if red.samples is not None and red.samples.numel():
        kept_caption += f"; {red.samples.numel()} uniform samples outlined cyan"
    if points is not None and len(points):
        kept_caption += "; the query's patches outlined magenta"
    if red.layer:
        kept_caption += f" — all {red.n_tokens} enter the LLM, these remain from layer {red.layer} on"
    if red.labels is not None:
        groups = canvas.clusters(red.labels, kept_mask=kept)
        sizes = np.bincount(red.labels.cpu().numpy())
        top = ", ".join(str(v) for v in np.sort(sizes)[::-1][:3])
        caption = (f"{red.n_clusters} clusters (connected components of similarity ≥ γ); largest: {top} patches; "
                   f"{int((sizes == 1).sum())} singletons grey; kept outlined white")
    elif red.merge_index is not None:
        groups = canvas.merge_groups(red.kept, red.merge_index)
        caption = (f"Merge groups: each kept token with its {red.merge_index.shape[1]} key-nearest patches "
                   f"(in its colour); kept outlined white")
    elif red.groups is not None:
        groups = canvas.groups(red.groups, kept=red.kept)
        sizes = np.bincount(red.groups[red.groups >= 0].cpu().numpy())
        sizes = sizes[sizes > 0]
        top = ", ".join(str(v) for v in np.sort(sizes)[::-1][:3])
        caption = f"{sizes.size} merge groups (one colour per token); largest: {top} patches"
    else:
        groups, caption = None, f"{label} neither clusters nor merges patches"
    values, heat_caption = heat_values(vt, red, attention)
    if values is None:
        heat = canvas.kept(kept)
    else:
        scaled, log = colour_scale(values)
        heat = draw.with_colour_bar(canvas.heatmap(scaled, kept_mask=kept), f"{values.min():.2g}",
                                    f"{values.max():.2g}")
        heat_caption += f"; colour bar: min to max{' on a log scale' if log else ''}; kept outlined white"
    return Pictures(kept_img, kept_caption, groups, caption, heat, heat_caption)


def colour_scale(values: np.ndarray) -> tuple[np.ndarray, bool]:
    """Values → [0, 1] for a heatmap: min–max, on a log scale when they are positive and span more than two
    decades (attention does: with a linear scale a handful of patches would be bright and the rest one colour)."""
    lo, hi = float(values.min()), float(values.max())
    if lo > 0 and hi / lo > 100:
        logs = np.log(values)
        return (logs - np.log(lo)) / (np.log(hi) - np.log(lo)), True
    return ((values - lo) / (hi - lo) if hi > lo else values * 0), False


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------
def histogram(vt: VisualTokens, red: Reduction, settings: Settings):
    """The per-patch score histogram each method is decided by, titled for what it shows, with only the
    thresholds that method uses (PruMerge: Q1, Q3 and the IQR fence; PAR: τ on h; methods keeping the top of a
    score: the cut at the lowest kept value)."""
    kept = red.kept_mask.cpu().numpy()
    attention = settings.inputs.attention
    if red.fence is not None:  # PruMerge
        lines = [(red.q1, "Q1", "quartile"), (red.q3, "Q3", "quartile"), (red.fence, "fence", "fence")]
        return plots.score_histogram(red.attn.float().cpu().numpy(), kept, "CLS → patch attention: outliers above "
                                     "the IQR fence are kept", f"attention ({attention})", lines)
    if red.hybrid is not None:  # PAR
        tau = settings.params.tau
        return plots.score_histogram(red.hybrid.float().cpu().numpy(), kept, "PAR hybrid relevance h: routed if ≥ τ",
                                     "h = α·r + (1 − α)·R_cluster", [(tau, f"τ = {tau:g}", "cut")])
    heat = red.trace.heat() if red.trace is not None else None
    if heat is not None:  # a method with a trace: its own score and threshold lines
        label, values = heat
        values = values.float().cpu().numpy()
        shown = np.isfinite(values)
        return plots.score_histogram(values[shown], kept[shown], f"{label}: the highest are kept", label,
                                     [(v, name, "cut") for name, v in red.trace.lines()])
    if red.attn is not None and red.kept.numel():  # the top of a score: top-attention, FastV, VisionZip
        values = red.attn.float().cpu().numpy()
        cut = float(values[red.kept.cpu().numpy()].min())
        source = "LLM attention (FastV)" if red.layer else f"CLS attention ({attention})"
        return plots.score_histogram(values, kept, f"{source}: the highest are kept", source, [(cut, "cut", "cut")])
    values = vt.cls_attn.float().cpu().numpy() if vt.cls_attn is not None else np.zeros(vt.n)
    return plots.score_histogram(values, kept, "CLS attention (not read by this method)", f"attention ({attention})")


def figures(vt: VisualTokens, red: Reduction, settings: Settings):
    """(score histogram, stage funnel)."""
    return histogram(vt, red, settings), plots.stage_funnel(red.stages)


# --------------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------------
def flops_summary(lm_config, n_text: int, red: Reduction) -> dict:
    """Prefill FLOPs of the LLM, all visual tokens vs this reduction (FastV: K layers on all, the rest on the
    kept ones)."""
    schedule = llm_schedule(red)
    f = prefill_flops_of(lm_config, n_text, red.n_tokens, red.n_kept, red.layer, schedule)
    staged = len(schedule) > 2
    return {
        "llm_layers": lm_dims(lm_config)[2],
        "text_tokens": n_text,
        "prefill_flops_full": f["full"],
        "prefill_flops_reduced": f["reduced"],
        "flops_saving": 1.0 - f["ratio"],
        "formula": ("per layer 2·n·(4d² + 3dm) + 4n²d; each stage's layers on the tokens present then" if staged
                    else "per layer 2·n·(4d² + 3dm) + 4n²d; FastV: layers < K on all tokens, the rest on the kept"
                    if red.layer else "per layer 2·n·(4d² + 3dm) + 4n²d, n = text + visual tokens"),
    }


def _rounded(x, digits: int) -> list:
    """A tensor as a JSON list, rounded in one vectorised step (no per-element Python work)."""
    return np.round(x.detach().float().cpu().numpy().astype(np.float64), digits).tolist()


def per_patch(vt: VisualTokens, red: Reduction) -> dict:
    """Per-patch data for researchers: indices are row-major over `image.grid`, `kept` in the order the LLM
    receives the tokens."""
    out = {"kept": red.kept.tolist()}
    if vt.cls_attn is not None:
        out["attention"] = _rounded(vt.cls_attn, 8)
    if red.relevance is not None:
        out["relevance"] = _rounded(red.relevance, 6)
        out["hybrid"] = _rounded(red.hybrid, 6)
        out["labels"] = red.labels.tolist()
    if red.merge_index is not None:
        weights = _rounded(red.merge_weight, 8)
        out["merge_groups"] = {str(k): {"neighbours": nbr, "weights": wt}
                               for k, nbr, wt in zip(out["kept"], red.merge_index.tolist(), weights)}
    if red.groups is not None:
        out["groups"] = red.groups.tolist()
        out["group_weight"] = _rounded(red.group_weight, 6)
    if red.layer and red.attn is not None:
        out["llm_attention"] = _rounded(red.attn, 8)
    if red.trace is not None:  # the method's own columns (NaN: not defined for that patch → null)
        for name, col in red.trace.per_patch().items():
            out[name] = [None if v != v else v for v in _rounded(col, 8)]
    return out


def summary(red: Reduction, vt: VisualTokens, settings: Settings, flops: dict, extra: dict | None = None,
            with_per_patch: bool = True) -> dict:
    """The result as plain data: the reduction's numbers, the settings, FLOPs, the paper's figures and (unless
    `with_per_patch` is false) the per-patch data, then `extra`."""
    out = red.summary()
    entry = settings.entry
    out.update(settings.as_dict())
    out["method_label"] = entry.label
    out["flops"] = flops
    if "llm_layers" in flops:  # equivalent tokens: the mean over the LLM's layers of the visual tokens present
        out.update(accounting(red, flops["llm_layers"]))
    if red.trace is not None:
        out["trace_readout"] = red.trace.readout()
    if entry.headline:
        out["paper"] = {"citation": entry.paper, "headline": entry.headline}
    if with_per_patch:
        out["per_patch"] = per_patch(vt, red)
    out.update(extra or {})
    return out


def readout_markdown(s: dict) -> str:
    """Two short lines: tokens and FLOPs, then the funnel and the method's own numbers."""
    f = s["flops"]
    first = (f"**{s['method_label']}** · visual tokens **{s['n_tokens']} → {s['n_kept']}** "
             f"(−{100 * s['compression']:.1f} %) · prefill {f['prefill_flops_full'] / 1e9:.2f} → "
             f"{f['prefill_flops_reduced'] / 1e9:.2f} GFLOPs (−{100 * f['flops_saving']:.1f} %)")
    if s.get("llm_layer"):
        first += f" · pruned inside the LLM at layer {s['llm_layer']}"
    if "equivalent_tokens" in s:
        first += f" · equivalent tokens {s['equivalent_tokens']:.1f} (mean over {s['llm_layers']} LLM layers)"
    details = ["Stages: " + " → ".join(f"{k} {v}" for k, v in s["stages"].items())]
    if "n_clusters" in s:
        details.append(f"{s['n_clusters']} clusters")
    if "fence" in s:
        details.append(f"Q1 {s['q1']:.3g} · Q3 {s['q3']:.3g} · fence {s['fence']:.3g}")
    details.extend(s.get("trace_readout", []))
    if s.get("query"):
        cut = " (the prompt was truncated to the text tower's context)" if s["query"].get("truncated") else ""
        details.append(f"Query: {s['query']['description']}{cut}")
    return first + "\n\n" + " · ".join(details)


# --------------------------------------------------------------------------------------------------
# Sweep, comparison, inspection, A/B
# --------------------------------------------------------------------------------------------------
def sweep_fields(entry: RegistryEntry) -> list[str]:
    """The slider controls of a method's parameters (what a sweep can vary)."""
    return [name for name, control, _ in entry.controls if control.kind == "slider"]


def sweep(vt: VisualTokens, settings: Settings, name: str | None = None, points: int = SWEEP_POINTS):
    """Tokens to the LLM as one slider of the active method sweeps its range (others fixed): (xs, kept counts,
    cluster counts or None, current value, field name), or None when the method has no slider."""
    names = sweep_fields(settings.entry)
    if not names:
        return None
    name = name if name in names else names[0]
    entry, params = settings.entry, settings.params
    control = settings.schema.specs[name].control
    hi = min(control.maximum, vt.n) if control.budget else control.maximum
    xs = np.linspace(control.minimum, hi, points)
    if control.integer:
        xs = np.unique(np.round(xs))
    clusters = None
    if name == "cluster_threshold" and hasattr(params, "spatial"):  # the forest first: then each γ costs O(N)
        clusters = vt.cluster_sweep(params.spatial).count(xs)
    counts, shown = [], []
    for x in xs:
        try:
            counts.append(_count(entry, vt, dataclasses.replace(params, **{name: int(x) if control.integer
                                                                         else float(x)})))
            shown.append(x)
        except ValueError:  # an invalid combination (e.g. SparseVLM's layers out of order): not a point
            continue
    return np.asarray(shown), np.asarray(counts), clusters, float(getattr(params, name)), name


def _count(entry: RegistryEntry, vt: VisualTokens, params) -> int:
    """Tokens to the LLM: the reducer's, or — for a method that prunes inside the LLM in stages and knows its
    counts before the forward (`params.llm_schedule`) — the last count of the stages the LLM reaches (its layer
    count from the probe, `lm_probe.n_layers`), so a sweep runs no forward."""
    n_layers = getattr(vt.lm_probe, "n_layers", None)
    if hasattr(params, "llm_schedule") and hasattr(params, "plan") and n_layers is not None:
        return int(params.llm_schedule(vt.n, int(n_layers))[-1][1])
    return entry(vt, params).n_kept


def inspect_patch(vt: VisualTokens, red: Reduction, index: int) -> dict:
    """Everything about one patch: where it is, its scores, its cluster, whether (and where) it was kept, and
    for merging methods which kept token absorbed it and with what weight."""
    h, w = vt.grid
    r, c = divmod(int(index), w)
    kept = red.kept.tolist()
    out = {"patch": int(index), "row": r, "column": c, "kept": index in kept}
    if index in kept:
        out["position_in_llm_input"] = kept.index(index)
    if vt.cls_attn is not None:
        a = vt.cls_attn.float()
        out["attention"] = float(a[index])
        out["attention_rank"] = int((a > a[index]).sum()) + 1
    if red.relevance is not None:
        out["relevance"] = float(red.relevance[index])
        out["hybrid"] = float(red.hybrid[index])
        label = int(red.labels[index])
        out["cluster"] = label
        out["cluster_size"] = int((red.labels == label).sum())
        out["retrieved"] = bool(red.retrieved[index])
        out["routed"] = bool(red.routed[index])
    if red.merge_index is not None:
        rows, cols = torch.nonzero(red.merge_index == index).T.tolist()  # (kept token, neighbour slot) pairs
        absorbed = [(kept[i], float(red.merge_weight[i, j])) for i, j in zip(rows, cols)]
        out["merged_into"] = [{"kept_patch": k, "weight": wt} for k, wt in absorbed]
        if red.extra_token and index not in kept:
            out["in_aggregate_token"] = True
    if red.groups is not None and int(red.groups[index]) >= 0:
        g = int(red.groups[index])
        out["token"] = g
        out["group_size"] = int((red.groups == g).sum())
        out["weight_in_token"] = float(red.group_weight[index])
    if red.layer and red.attn is not None:
        out["llm_attention"] = float(red.attn[index])
    if red.trace is not None and red.trace.inspect(index):
        out["trace"] = red.trace.inspect(index)
    return out


def jaccard(a, b) -> float:
    """|A ∩ B| / |A ∪ B| of two kept index sets (1 when both are empty)."""
    sa, sb = set(int(i) for i in a), set(int(i) for i in b)
    union = sa | sb
    return len(sa & sb) / len(union) if union else 1.0
