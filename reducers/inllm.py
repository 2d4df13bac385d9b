"""Pruning inside the LLM in several stages (SparseVLM, PyramidDrop): the pure pieces both share.

All N visual tokens enter the LLM. At stage s the attention of LLM layer `a_s` over the tokens still present
ranks the visual ones; from layer `b_s` on only the chosen ones remain (SparseVLM: b_s = a_s + 1, the pruning
layer's own output is pruned; PyramidDrop: b_s = a_s, layer a_s's attention on its input ranks and the layer
then runs on the rest). A method may also recycle some pruned tokens into a few new tokens appended after the
kept ones (SparseVLM).

The method's decisions are pure functions here (a `StagePlan`); the backend runs the real forward, computes
at each stage the attention the plan asks for, hands it to the plan and records what it decided
(`StagedRecord`, computed once per image + prompt + plan and cached by the backend). The reducer replays the
record into a `Reduction`; answers and scores replay the same decisions inside the LLM's forward.

Token ids in a record: 0…N−1 are the patches; N + j is the j-th recycled token made (in making order).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .base import Reduction, Trace, VisualTokens


# --------------------------------------------------------------------------------------------------
# Decisions and records
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Decision:
    """What one stage does to the visual tokens present (offsets into them, in their current order).

    keep:  [k] long, ascending: the tokens that stay, in their order
    merge: groups of pruned offsets, each recycled into one new token appended after the kept ones (in group
           order); the other pruned tokens are dropped
    """

    keep: Tensor
    merge: tuple[Tensor, ...] = ()

    def cpu(self) -> "Decision":
        """The same decision (subclass and its extra fields included) with every tensor on the CPU."""
        changes = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                changes[f.name] = v.cpu()
            elif isinstance(v, tuple) and v and all(isinstance(g, Tensor) for g in v):
                changes[f.name] = tuple(g.cpu() for g in v)
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, eq=False)
class StageRecord:
    """One stage as it ran: the layer whose attention ranked (`layer`), the first layer on the reduced set
    (`boundary`), the ids of the visual tokens present before it [n_s], the score each got [n_s] (what the
    method ranked by) and the decision."""

    layer: int
    boundary: int
    present: Tensor
    score: Tensor
    decision: Decision


@dataclass(frozen=True, eq=False)
class StagedRecord:
    """Every stage of one staged forward: N, the stages in order, and (SparseVLM) the text raters — offsets
    into the text after the image whose attention rates the visual tokens."""

    n: int
    stages: tuple[StageRecord, ...]
    raters: Tensor | None = None
    n_layers: int = 0  # the LLM's layer count (0: unknown)

    def present_after(self, s: int) -> Tensor:
        """[n] ids present after stage s (s = −1: before any stage: every patch)."""
        ids = torch.arange(self.n)
        made = self.n
        for stage in self.stages[: s + 1]:
            new = torch.arange(made, made + len(stage.decision.merge), dtype=torch.long)
            made += len(stage.decision.merge)
            ids = torch.cat([stage.present[stage.decision.keep], new])
        return ids

    def members(self) -> dict[int, list[int]]:
        """Recycled id → the patches it holds (recursively, ascending)."""
        out: dict[int, list[int]] = {}
        made = self.n
        for stage in self.stages:
            for group in stage.decision.merge:
                patches: list[int] = []
                for t in stage.present[group].tolist():
                    patches.extend(out[t] if t >= self.n else [t])
                out[made] = sorted(patches)
                made += 1
        return out

    def counts(self) -> tuple[int, ...]:
        """Visual tokens present after each stage."""
        return tuple(int(self.present_after(s).numel()) for s in range(len(self.stages)))


class StagePlan:
    """A method's in-LLM decisions: a frozen, hashable dataclass (the backend's cache key) with

    points():            ((a_s, b_s), …) the ranking layer and the first reduced layer of each stage
    reachable(n_layers): the points an LLM of that many layers reaches (both official loops never reach a
                         stage whose ranking layer a_s ≥ L: it does not happen, and the readout says so)
    raters(v, t):        [r] offsets into the text after the image whose attention rows the plan reads, from the
                         LLM's input embeddings of the visual [n, H] and post-image text [t, H] tokens
    decide(s, n, rows, hidden): (score [n_present], Decision) from `rows` [r, n_present] — the head-mean
                         attention of the rater rows to the visual tokens present — and their hidden states
                         [n_present, H] at the boundary (for recycling); n is N
    merged(hidden, groups): [len(groups), H] the recycled tokens' hidden states

    Two class attributes say what the plan reads and how positions go on (defaults: SparseVLM, PyramidDrop):
    reads = "attention": `decide` gets the rater rows as above; reads = "keys" (DART): `decide_keys(s, n_present,
                         keys, states, positions)` gets, for the visual tokens present followed by every text
                         token after them, layer a_s's keys on its input ([n_present + t, D], after RoPE, heads
                         concatenated, GQA keys expanded), layer b_s − 1's output through the LLM's final norm
                         ([n_present + t, H]) and their sequence positions ([n_present + t] long)
    renumbers = True:    positions are renumbered 0…T'−1 after a stage; False (DART, FastV): the kept rows keep
                         their original positions and a decoded token sits at T + n in every layer
    """

    reads = "attention"
    renumbers = True

    def points(self) -> tuple[tuple[int, int], ...]:
        raise NotImplementedError

    def reachable(self, n_layers: int) -> tuple[tuple[int, int], ...]:
        return tuple((a, b) for a, b in self.points() if a < n_layers)

    def raters(self, visual: Tensor, text: Tensor) -> Tensor:
        raise NotImplementedError

    def decide(self, s: int, n: int, rows: Tensor, hidden: Tensor) -> tuple[Tensor, Decision]:
        raise NotImplementedError

    def decide_keys(self, s: int, n_present: int, keys: Tensor, states: Tensor, positions: Tensor
                    ) -> tuple[Tensor, Decision]:
        raise NotImplementedError

    def merged(self, hidden: Tensor, groups: tuple[Tensor, ...]) -> Tensor:
        return hidden.new_zeros((0, hidden.shape[-1]))


def check_decision(d: Decision, n_present: int) -> None:
    """ValueError unless `d` keeps distinct ascending offsets in range and merges only pruned ones."""
    keep = d.keep
    if keep.dtype != torch.long or keep.ndim != 1:
        raise ValueError("a stage must keep a 1-D long tensor of offsets")
    if keep.numel() and (int(keep[0]) < 0 or int(keep[-1]) >= n_present or bool((keep[1:] <= keep[:-1]).any())):
        raise ValueError("a stage must keep distinct ascending offsets into the tokens present")
    kept = set(keep.tolist())
    seen: set[int] = set()
    for g in d.merge:
        items = g.tolist()
        if not items or any(i in kept or i in seen or not 0 <= i < n_present for i in items):
            raise ValueError("a stage may only recycle pruned tokens, each once, in non-empty groups")
        seen.update(items)


# --------------------------------------------------------------------------------------------------
# Schedules and equivalent tokens
# --------------------------------------------------------------------------------------------------
def llm_schedule(red: Reduction) -> tuple[tuple[int, int], ...]:
    """((first layer, visual tokens present from there on), …) of a reduction: before the LLM ((0, M'),);
    FastV ((0, N), (K, M)); staged methods from their trace."""
    schedule = getattr(red.trace, "schedule", None)
    if schedule:
        return tuple(schedule)
    if red.layer:
        return ((0, red.n_tokens), (int(red.layer), red.n_kept))
    return ((0, red.n_kept),)


def equivalent_tokens(schedule, n_layers: int) -> float:
    """The mean over the LLM's `n_layers` layers of the visual tokens present in each: Σ count × layers it
    spans / L (segments starting at or beyond L never run). FastV: (K·N + (L − K)·M) / L."""
    if n_layers < 1:
        raise ValueError(f"the LLM needs at least one layer, got {n_layers}")
    total = 0
    segments = sorted((int(start), int(count)) for start, count in schedule)
    for i, (start, count) in enumerate(segments):
        end = segments[i + 1][0] if i + 1 < len(segments) else n_layers
        total += count * max(0, min(end, n_layers) - min(start, n_layers))
    return total / n_layers


def budget_for_equivalent(params, budget_field: str, target: float, n: int, n_layers: int, top: int):
    """The budget in 1…top whose equivalent tokens come closest to `target` (ties: the smaller budget), for a
    budget method whose params know their schedule before the forward (`params.llm_schedule(n)`: FastV); any
    other budget method's equivalent tokens are its budget, so `target` itself (rounded, within 1…top)."""
    top = max(1, int(top))
    if not hasattr(params, "llm_schedule"):
        return max(1, min(int(round(target)), top))
    best, gap = 1, math.inf
    for b in range(1, top + 1):
        eq = equivalent_tokens(dataclasses.replace(params, **{budget_field: b}).llm_schedule(n), n_layers)
        if abs(eq - target) < gap:
            best, gap = b, abs(eq - target)
    return best


def accounting(red: Reduction, n_layers: int) -> dict:
    """{"equivalent_tokens", "llm_layers", "llm_schedule"} of a reduction on an LLM of `n_layers` layers."""
    schedule = llm_schedule(red)
    return {"equivalent_tokens": equivalent_tokens(schedule, n_layers), "llm_layers": int(n_layers),
            "llm_schedule": [list(seg) for seg in schedule]}


# --------------------------------------------------------------------------------------------------
# The Reduction and the trace a staged record replays into
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class StagedTrace(Trace):
    """The diagnostics every staged in-LLM method shares: the plan, the record and the schedule."""

    plan: StagePlan = None
    record: StagedRecord = None
    schedule: tuple[tuple[int, int], ...] = ()
    score_name: str = ""  # what the stage scores are, e.g. "text raters' attention"

    def replay(self):
        return self.plan, self.record

    def stage_scores(self) -> list[Tensor]:
        """Per stage, [N] the score of each patch present (NaN for patches no longer present)."""
        out = []
        for st in self.record.stages:
            full = torch.full((self.record.n,), float("nan"))
            patches = st.present < self.record.n
            full[st.present[patches]] = st.score.float().cpu()[patches]
            out.append(full)
        return out

    def dropped_at(self) -> Tensor:
        """[N] the stage (1, 2, …) after which each patch is no longer present as itself, 0 if it survives."""
        out = torch.zeros(self.record.n, dtype=torch.long)
        for s, st in enumerate(self.record.stages, start=1):
            kept = set(st.present[st.decision.keep].tolist())
            for t in st.present.tolist():
                if t < self.record.n and t not in kept:
                    out[t] = s
        return out

    def heat(self) -> tuple[str, Tensor] | None:
        if not self.record.stages:
            return None
        st = self.record.stages[0]
        return f"{self.score_name} at LLM layer {st.layer} (stage 1)", self.stage_scores()[0]

    def lines(self) -> list[tuple[str, float]]:
        if not self.record.stages:
            return []
        st = self.record.stages[0]
        if not st.decision.keep.numel():
            return []
        return [("stage-1 cut", float(st.score[st.decision.keep].min()))]

    def per_patch(self) -> dict[str, Tensor]:
        out = {f"stage{s}_score": v for s, v in enumerate(self.stage_scores(), start=1)}
        out["dropped_at_stage"] = self.dropped_at().float()
        return out

    def inspect(self, i: int) -> list[str]:
        lines = []
        for s, (st, v) in enumerate(zip(self.record.stages, self.stage_scores()), start=1):
            if math.isnan(float(v[i])):
                break
            kept = i in set(st.present[st.decision.keep].tolist())
            lines.append(f"stage {s} (layer {st.layer}): score {float(v[i]):.4g} — {'kept' if kept else 'pruned'}")
        return lines

    def readout(self) -> list[str]:
        counts = " → ".join(f"{c} from layer {start}" for start, c in self.schedule)
        out = [f"Visual tokens inside the LLM: {counts}"]
        if self.record.n_layers:
            eq = equivalent_tokens(self.schedule, self.record.n_layers)
            out.append(f"equivalent tokens {eq:.1f} (mean over the LLM's {self.record.n_layers} layers)")
            missed = [a for a, _ in self.plan.points()[len(self.record.stages):]]
            if missed:
                out.append(f"layer{'s' if len(missed) > 1 else ''} {', '.join(map(str, missed))} beyond the LLM's "
                           f"{self.record.n_layers} layers: never reached, so no pruning there (as the official "
                           f"loop)")
        return out


def staged_reduction(method: str, vt: VisualTokens, record: StagedRecord, trace: StagedTrace) -> Reduction:
    """The `Reduction` of a staged record: kept = the patches present after the last stage (their order);
    tokens = their features, then one row per recycled token present — the plain mean of the patch features
    it holds, a stand-in in feature space for drawing and export (the LLM receives the real recycled hidden
    states, which exist only inside its forward); n_extra = the recycled tokens present; layer = the first
    layer of the last reduced segment; groups (only when recycled tokens are present): each patch's token
    position (recycled: the token holding it, weight 1/size), −1 for a dropped patch."""
    n = vt.n
    final = record.present_after(len(record.stages) - 1) if record.stages else torch.arange(n)
    patches = final[final < n]
    recycled = final[final >= n]
    if patches.numel() and recycled.numel() and int((final >= n).nonzero()[0]) < patches.numel():
        raise ValueError("recycled tokens must follow the kept patches")
    members = record.members()
    feats = vt.features
    kept = patches.to(feats.device)
    rows = [feats[kept]]
    groups = torch.full((n,), -1, dtype=torch.long)
    weight = torch.zeros(n)
    groups[patches] = torch.arange(patches.numel())
    weight[patches] = 1.0
    for j, t in enumerate(recycled.tolist()):
        held = torch.tensor(members[t], dtype=torch.long)
        rows.append(feats[held.to(feats.device)].float().mean(0, keepdim=True).to(feats.dtype))
        groups[held] = patches.numel() + j
        weight[held] = 1.0 / held.numel()
    tokens = torch.cat(rows) if rows else feats[:0]
    stages = {"tokens": n}
    schedule = trace.schedule
    for (start, count), (nxt, _) in zip(schedule, schedule[1:]):
        stages[f"LLM layers {start}–{nxt - 1}"] = count
    stages["to LLM"] = int(final.numel())
    last = schedule[-1][0] if len(schedule) > 1 else 0
    merging = bool(recycled.numel())  # groups only when recycled tokens reach the LLM
    return Reduction(method=method, kept=kept, tokens=tokens, grid=vt.grid, stages=stages,
                     n_extra=int(recycled.numel()), layer=int(last),
                     groups=groups.to(feats.device) if merging else None,
                     group_weight=weight.to(feats.device) if merging else None, trace=trace)


def schedule_of(record: StagedRecord) -> tuple[tuple[int, int], ...]:
    """((0, N), (b_1, n_1), …): the visual tokens present from each boundary on."""
    out = [(0, record.n)]
    for st, count in zip(record.stages, record.counts()):
        out.append((st.boundary, count))
    return tuple(out)


# --------------------------------------------------------------------------------------------------
# A toy LLM: a deterministic stand-in for the backend's probe (synthetic backend, reference tests)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ToyLLM:
    """A pure stand-in for an LLM's staged forward, for the synthetic backend and the reference tests: the
    hidden state of every visual token is its vector (a patch's feature, a recycled token's merged vector)
    at every layer; the head-mean attention of text row r in layer a to the visual tokens present is the
    softmax over [visual logits, text logits] with logits q_{a,r} · x / √d (q seeded per layer and row) and
    the text logits 0. Text embeddings for the raters: seeded rows. For a plan that reads keys (DART) the
    n_text text tokens follow the image, which starts at sequence position `image_start`: the keys of layer a
    are [visual vectors; text rows] @ K_a (K_a seeded per layer), the states the vectors and text rows
    themselves, the positions the original ones."""

    features: Tensor
    n_layers: int
    n_text: int = 6
    seed: int = 0
    image_start: int = 5
    queries: Tensor = field(init=False, repr=False)
    text: Tensor = field(init=False, repr=False)
    key_maps: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        d = self.features.shape[1]
        gen = torch.Generator().manual_seed(self.seed)
        object.__setattr__(self, "queries", 3 * torch.randn(self.n_layers, self.n_text, d, generator=gen))
        object.__setattr__(self, "text", torch.randn(self.n_text, d, generator=gen))
        object.__setattr__(self, "key_maps", torch.randn(self.n_layers, d, d, generator=gen) / math.sqrt(d))

    def rows(self, layer: int, x: Tensor) -> Tensor:
        """[n_text, n] the toy attention of every text row to the visual vectors x [n, d]."""
        logits = self.queries[layer] @ x.float().cpu().T / math.sqrt(x.shape[1])
        full = torch.cat([logits, torch.zeros(self.n_text, self.n_text)], dim=1)
        return torch.softmax(full, dim=1)[:, : x.shape[0]]

    def run(self, plan: StagePlan) -> StagedRecord:
        n = self.features.shape[0]
        x = self.features.detach().float().cpu()
        ids = torch.arange(n)
        raters = plan.raters(x, self.text)
        stages = []
        made = n
        for s, (a, b) in enumerate(plan.reachable(self.n_layers)):
            if plan.reads == "keys":
                states = torch.cat([x, self.text])
                positions = torch.cat([self.image_start + ids, self.image_start + n + torch.arange(self.n_text)])
                score, d = plan.decide_keys(s, ids.numel(), states @ self.key_maps[a], states, positions)
            else:
                score, d = plan.decide(s, n, self.rows(a, x)[raters], x)
            check_decision(d, ids.numel())
            stages.append(StageRecord(a, b, ids, score, d))
            new = plan.merged(x, d.merge)
            x = torch.cat([x[d.keep], new.float()])
            ids = torch.cat([ids[d.keep], torch.arange(made, made + len(d.merge))])
            made += len(d.merge)
        return StagedRecord(n, tuple(stages), raters, self.n_layers)
