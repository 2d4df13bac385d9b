"""The pictures and numbers of one reduction — pure: no cache, no model, no gradio.

The pipeline supplies the `VisualTokens` and the `Reduction`; `screen.py` calls these for one result,
`compare.py` for the sweep, `bench/latency.py` times them in-process. What a method shows of its own (its
score, thresholds, clusters, merge groups, per-patch fields, inspector lines) comes from its `Reduction.trace`:
nothing here knows which method ran.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from reducers import RegistryEntry, Reduction, VisualTokens
from reducers.inllm import accounting, llm_schedule

from ..backend.cost import lm_dims, prefill_flops_of
from ..pictures import draw, plots
from ..settings import Settings

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
    """The per-patch score the method decides by (its trace's heat), else the CLS→patch attention (of the chosen
    mode), for the heatmap and the histogram."""
    heat = red.trace.heat()
    if heat is not None:
        return heat[1].float().cpu().numpy(), heat[0]
    if vt.cls_attn is not None:
        return vt.cls_attn.float().cpu().numpy(), f"CLS → patch attention ({attention})"
    return None, "No per-patch score for this tower"


def samples(red: Reduction):
    """The patches the method marks in the kept picture (its trace's `marked`), or None."""
    marked = red.trace.marked()
    return marked[1] if marked is not None else None


def pictures(canvas: draw.Canvas, vt: VisualTokens, red: Reduction, attention: str, label: str,
             points: np.ndarray | None = None) -> Pictures:
    """The three on-image pictures of a reduction, aligned with the patches the model saw. `canvas` is the
    encode's view on the reduction's grid (re-used across moves); `points` the patches PAR's query points at."""
    kept = red.kept_mask.cpu()
    marked = red.trace.marked()
    kept_img = canvas.kept(kept, samples=samples(red), points=points)
    kept_caption = f"{label}: {red.kept.numel()} of {red.n_tokens} patches kept (bright, amber outline)"
    if marked is not None:
        kept_caption += f"; {marked[0]}"
    if points is not None and len(points):
        kept_caption += "; the query's patches outlined magenta"
    if red.layer:
        kept_caption += f" — all {red.n_tokens} enter the LLM, these remain from layer {red.layer} on"
    groups, caption = groups_picture(canvas, red, kept, label)
    values, heat_caption = heat_values(vt, red, attention)
    if values is None:
        heat = canvas.kept(kept)
    else:
        scaled, log = colour_scale(values)
        heat = draw.with_colour_bar(canvas.heatmap(scaled, kept_mask=kept), f"{values.min():.2g}",
                                    f"{values.max():.2g}")
        heat_caption += f"; colour bar: min to max{' on a log scale' if log else ''}; kept outlined white"
    return Pictures(kept_img, kept_caption, groups, caption, heat, heat_caption)


def groups_picture(canvas: draw.Canvas, red: Reduction, kept, label: str) -> tuple[np.ndarray | None, str]:
    """The tokens' groups (merging methods that partition the patches), else the trace's regions (clusters,
    merge groups), else None."""
    if red.groups is not None:
        groups = canvas.groups(red.groups, kept=red.kept)
        sizes = np.bincount(red.groups[red.groups >= 0].cpu().numpy())
        sizes = sizes[sizes > 0]
        top = ", ".join(str(v) for v in np.sort(sizes)[::-1][:3])
        return groups, f"{sizes.size} merge groups (one colour per token); largest: {top} patches"
    regions = red.trace.regions()
    if regions is None:
        return None, f"{label} neither clusters nor merges patches"
    style, labels, caption = regions
    if style == "clusters":
        return canvas.clusters(labels, kept_mask=kept), caption
    if style == "tokens":
        return canvas.token_groups(labels, kept=red.kept), caption
    return canvas.groups(labels, kept=red.kept), caption


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
    """The histogram of the per-patch score the method decides by (its trace's heat), kept and dropped stacked,
    with only the thresholds its trace draws; a method without a score of its own: the CLS attention it does
    not read."""
    kept = red.kept_mask.cpu().numpy()
    attention = settings.inputs.attention
    heat = red.trace.heat()
    if heat is None:
        values = vt.cls_attn.float().cpu().numpy() if vt.cls_attn is not None else np.zeros(vt.n)
        return plots.score_histogram(values, kept, "CLS attention (not read by this method)", f"attention ({attention})")
    label, score = heat
    score = score.float().cpu().numpy()
    shown = np.isfinite(score)  # a trace may leave a patch without a value (NaN)
    score, kept = score[shown], kept[shown]
    title, _, rest = label.partition(": ")
    lines = [(line[1], line[0], line[2] if len(line) > 2 else "cut") for line in red.trace.lines()]
    return plots.score_histogram(score, kept, f"{title}: {rest}" if rest else title,
                                 title + (f" ({attention})" if "cls_attn" in settings.entry.needs else ""), lines)


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
    receives the tokens; then the tokens' groups and the method's own fields (its trace's `per_patch`)."""
    out = {"kept": red.kept.tolist()}
    if vt.cls_attn is not None:
        out["attention"] = _rounded(vt.cls_attn, 8)
    if red.groups is not None:
        out["groups"] = red.groups.tolist()
        out["group_weight"] = _rounded(red.group_weight, 6)
    for name, value in red.trace.per_patch().items():
        if isinstance(value, torch.Tensor):  # NaN (no value for that patch) → null
            value = ([None if v != v else v for v in _rounded(value, 8)] if value.is_floating_point()
                     else value.tolist())
        out[name] = value
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
    if red.trace is not None and red.trace.readout():
        out["method_notes"] = list(red.trace.readout())
    if with_per_patch:
        out["per_patch"] = per_patch(vt, red)
    out.update(extra or {})
    return out


def readout_markdown(s: dict, red: Reduction | None = None) -> str:
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
    if red is not None:
        details += red.trace.readout()
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
    series = getattr(params, "sweep_series", None)  # a method's own curve (PAR: clusters), computed first
    extra = series(vt, name, xs) if series is not None else None
    if extra is not None:
        clusters = extra[1]
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
    schedule = getattr(params, "llm_schedule", None)
    if schedule is not None and n_layers is not None:
        return int(schedule(vt.n, int(n_layers))[-1][1])
    return entry(vt, params).n_kept


def inspect_patch(vt: VisualTokens, red: Reduction, index: int) -> dict:
    """Everything about one patch: where it is, its scores, its cluster, whether (and where) it was kept, and
    for merging methods which kept token absorbed it and with what weight."""
    h, w = vt.grid
    r, c = divmod(int(index), w)
    kept = red.kept.tolist()
    out = {"patch": int(index), "row": r, "column": c, "kept": index in kept}
    if index in kept:
        out["position_in_llm_input"] = red.n_lead + kept.index(index)
    if vt.cls_attn is not None:
        a = vt.cls_attn.float()
        out["attention"] = float(a[index])
        out["attention_rank"] = int((a > a[index]).sum()) + 1
    out.update(red.trace.facts(index))
    if red.groups is not None and int(red.groups[index]) >= 0:
        g = int(red.groups[index])
        out["token"] = g
        out["group_size"] = int((red.groups == g).sum())
        out["weight_in_token"] = float(red.group_weight[index])
    out["lines"] = red.trace.inspect(index)
    return out


def jaccard(a, b) -> float:
    """|A ∩ B| / |A ∪ B| of two kept index sets (1 when both are empty)."""
    sa, sb = set(int(i) for i in a), set(int(i) for i in b)
    union = sa | sb
    return len(sa & sb) / len(union) if union else 1.0
