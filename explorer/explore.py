"""From a cached encode and the UI's settings to pictures and numbers — the work of one slider move.

No gradio here: `ui.py` wires these functions to components, `bench/latency.py` times them in-process.
Expensive work (encoding the image, embedding the prompt) is done by the backend and cached there; a slider
move only runs a reducer on memoised per-image quantities and redraws.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from reducers import REDUCERS, BudgetParams, PARParams, PruMergeParams, Reduction, VisualTokens

from . import draw, plots
from .cost import prefill_flops

ATTENTION_MODES = ("official", "head-mean")
METHOD_LABELS = {
    "par": "PAR (as specified here)",
    "prumerge": "PruMerge",
    "prumerge+": "PruMerge+",
    "all": "All tokens",
    "random": "Random (matched budget)",
    "uniform": "Uniform grid (matched budget)",
    "top-attention": "Top-M CLS attention (matched budget)",
}
BASELINES = ("random", "uniform", "top-attention")

# Headline numbers of the papers, shown as reference labels (ALGORITHMS.md, seeds/).
PAPER_NUMBERS = {
    "prumerge": "Paper (LLaVA-1.5-7B, 576 → ~32 tokens): VQAv2 78.5 → 72.0, TextVQA 58.2 → 56.0, "
    "POPE 85.9 → 76.3, MME 1510.7 → 1350.3.",
    "prumerge+": "Paper (LLaVA-1.5-7B, 576 → ~144 tokens): VQAv2 78.5 → 76.8, TextVQA 58.2 → 57.1, "
    "POPE 85.9 → 84.0, MME 1510.7 → 1462.4.",
    "par": "Paper: −83 % FLOPs, 89 % compression, 97 % of baseline accuracy kept, 2× the reduction of prior methods.",
}


@dataclass(frozen=True)
class Settings:
    """Everything the controls set; each field is one control (the params dataclasses hold the sliders)."""

    method: str = "par"
    par: PARParams = field(default_factory=PARParams)
    prumerge: PruMergeParams = field(default_factory=PruMergeParams)
    budget: BudgetParams = field(default_factory=BudgetParams)
    attention: str = "official"
    rewrite: bool = True

    def __post_init__(self) -> None:
        if self.method not in REDUCERS:
            raise ValueError(f"Unknown method {self.method!r}; choose one of {', '.join(REDUCERS)}.")
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"Unknown attention mode {self.attention!r}; choose one of {ATTENTION_MODES}.")

    @property
    def params(self):
        """The parameter object the active reducer takes."""
        if self.method == "par":
            return self.par
        if self.method in ("prumerge", "prumerge+"):
            return dataclasses.replace(self.prumerge, plus=self.method == "prumerge+")
        if self.method in BASELINES:
            return self.budget
        return None

    def as_dict(self) -> dict:
        return {
            "method": self.method,
            "attention": self.attention,
            "rewrite": self.rewrite,
            "par": dataclasses.asdict(self.par),
            "prumerge": dataclasses.asdict(self.prumerge),
            "budget": dataclasses.asdict(self.budget),
        }


def visual_tokens(base: VisualTokens, attn_head_mean: torch.Tensor, settings: Settings, query=None) -> VisualTokens:
    """The encode's tokens with the chosen attention mode and query; memoised similarities carry over."""
    changes = {}
    if settings.attention == "head-mean":
        changes["cls_attn"] = attn_head_mean
    if query is not None:
        changes["query"] = query
    return base.derive(**changes) if changes else base


def reduce(vt: VisualTokens, settings: Settings) -> Reduction:
    return REDUCERS[settings.method](vt, settings.params)


@dataclass(frozen=True)
class Pictures:
    kept: np.ndarray  # retained patches on the view
    groups: np.ndarray  # PAR clusters, or PruMerge merge groups, or the kept overlay again
    groups_caption: str
    heatmap: np.ndarray  # PAR relevance, or CLS attention
    heatmap_caption: str


def pictures(canvas: draw.Canvas, vt: VisualTokens, red: Reduction) -> Pictures:
    """The three on-image pictures of a reduction, all aligned with the patches the model saw.

    `canvas` is the encode's view on the reduction's grid (`draw.Canvas(view, grid)`, re-used across moves)."""
    kept = red.kept_mask.cpu()
    kept_img = canvas.kept(kept, samples=red.samples)
    if red.labels is not None:
        groups = canvas.clusters(red.labels, kept_mask=kept)
        caption = f"{red.n_clusters} clusters of the similarity graph (connected components); kept patches outlined"
    elif red.merge_index is not None:
        n_out = red.outliers.numel()
        groups = canvas.merge_groups(red.kept, red.merge_index)
        caption = f"Merge groups: each kept token and its {red.merge_index.shape[1]} key-nearest patches ({n_out} outliers)"
    else:
        groups = kept_img
        caption = "No clusters or merge groups for this method"
    if red.relevance is not None:
        heat = canvas.heatmap(red.relevance, kept_mask=kept)
        heat_caption = "PAR relevance r = min-max cos(patch, prompt)"
    else:
        attn = vt.cls_attn if vt.cls_attn is not None else torch.zeros(vt.n)
        a = attn.float().cpu()
        span = float(a.max() - a.min())
        heat = canvas.heatmap((a - a.min()) / span if span > 0 else a * 0, kept_mask=kept)
        heat_caption = "CLS → patch attention (min-max scaled)"
    return Pictures(kept_img, groups, caption, heat, heat_caption)


def flops_summary(lm_config, n_text: int, n_visual: int, n_kept: int) -> dict:
    full = prefill_flops(lm_config, n_text + n_visual)
    reduced = prefill_flops(lm_config, n_text + n_kept)
    return {
        "text_tokens": n_text,
        "prefill_flops_full": full,
        "prefill_flops_reduced": reduced,
        "flops_saving": 1.0 - reduced / full if full else 0.0,
    }


def summary(red: Reduction, settings: Settings, flops: dict, extra: dict | None = None) -> dict:
    out = red.summary()
    out["params"] = settings.as_dict()
    out["method_label"] = METHOD_LABELS[red.method]
    out["flops"] = flops
    if red.method in PAPER_NUMBERS:
        out["paper"] = PAPER_NUMBERS[red.method]
    out.update(extra or {})
    return out


def readout_markdown(s: dict, untrained_notice: str = "") -> str:
    f = s["flops"]
    lines = [
        f"**{s['method_label']}** — visual tokens **{s['n_tokens']} → {s['n_kept']}** "
        f"(compression **{100 * s['compression']:.1f} %**)",
        f"Prefill FLOPs of the LM (with {f['text_tokens']} text tokens): "
        f"{f['prefill_flops_full'] / 1e9:.2f} G → {f['prefill_flops_reduced'] / 1e9:.2f} G, "
        f"saving **{100 * f['flops_saving']:.1f} %**",
        "Stages: " + " → ".join(f"{k} {v}" for k, v in s["stages"].items()),
    ]
    if "n_clusters" in s:
        lines.append(f"Clusters: {s['n_clusters']}")
    if "fence" in s:
        lines.append(f"IQR fence: Q1 {s['q1']:.3g}, Q3 {s['q3']:.3g}, fence {s['fence']:.3g}")
    if "paper" in s:
        lines.append(f"_Reference — {s['paper']}_")
    if untrained_notice:
        lines.append(f"⚠️ {untrained_notice}")
    return "\n\n".join(lines)


def figures(vt: VisualTokens, red: Reduction):
    """(attention histogram, stage funnel)."""
    attn = red.attn if red.attn is not None else vt.cls_attn
    hist = plots.attention_histogram(
        attn.float().cpu().numpy() if attn is not None else np.zeros(vt.n),
        red.q1,
        red.q3,
        red.fence,
        kept_mask=red.kept_mask.cpu().numpy(),
    )
    return hist, plots.stage_funnel(red.stages)


# --- sweep and comparison (may follow the core pictures) ---------------------------------------------
SWEEP_POINTS = 41


def sweep_fields(method: str) -> list[str]:
    """The slider fields of a method's parameters (what a sweep can vary)."""
    entry = REDUCERS[method]
    return [f.name for f in dataclasses.fields(entry.params) if "slider" in f.metadata]


def sweep(vt: VisualTokens, settings: Settings, name: str | None = None, points: int = SWEEP_POINTS):
    """Tokens to the LLM as one slider of the active method sweeps its range (others fixed).

    Returns (xs, kept counts, cluster counts or None, current value, field name).
    """
    names = sweep_fields(settings.method)
    if not names:
        return None
    name = name if name in names else names[0]
    params = settings.params
    spec = next(f for f in dataclasses.fields(type(params)) if f.name == name).metadata["slider"]
    hi = spec.maximum if name != "budget" else vt.n
    xs = np.linspace(spec.minimum, hi, points)
    if spec.step >= 1:
        xs = np.unique(np.round(xs))
    clusters = None
    if settings.method == "par" and name == "cluster_threshold":  # the forest first: then each γ costs O(N)
        clusters = vt.cluster_sweep(settings.par.spatial).count(xs)
    counts = []
    for x in xs:
        value = int(x) if spec.step >= 1 else float(x)
        red = REDUCERS[settings.method](vt, dataclasses.replace(params, **{name: value}))
        counts.append(red.n_kept)
    return xs, np.asarray(counts), clusters, float(getattr(params, name)), name


def comparison(vt: VisualTokens, canvas: draw.Canvas, settings: Settings, budget: int):
    """Every applicable method at a matched budget M (adaptive methods at the current settings).

    Returns a list of (method, Reduction, thumbnail).
    """
    rows = []
    for method, entry in REDUCERS.items():
        if any(getattr(vt, need) is None for need in entry.needs):
            continue
        if method in BASELINES:
            params = dataclasses.replace(settings.budget, budget=max(1, budget))
        else:
            params = dataclasses.replace(settings, method=method).params
        red = entry(vt, params)
        thumb = canvas.small.kept(red.kept_mask.cpu(), samples=red.samples)  # half size: a gallery thumbnail
        rows.append((method, red, thumb))
    return rows
