"""Reducer timings, side by side: `python -m bench.reducers [--repeats 15] [--sizes 24x24,48x60,64x64]`.

For each image size and method it prints
- cold:  median (and min) time of one call on a *fresh* `VisualTokens` per repeat, so the memoised per-image
         similarity / clusters are NOT reused (what a new image costs; building it is not timed);
- warm:  median time of a call on a `VisualTokens` that already served one call with the same parameters
         (memoised similarity, neighbour keys and clusters reused: what a slider move costs);
- ref:   the reference loop of tests/reference.py (Python loops over tokens, float64) and cold's speed-up
         over it;
- floor: the unavoidable dense product in the same dtype (PAR: the N×N feature similarity `x @ x.T`;
         PruMerge(+): the M×N key similarity `k[kept] @ k.T` with the M it kept; ToMe: every step's
         ⌈n/2⌉×⌊n/2⌋ key similarity `k[0::2] @ k[1::2].T`; pooling: one pass over the features `x.sum(0)`;
         FastV: the top-M of the ranking row; VisionZip: the (R − C)×C key similarity of the merged patches to
         the C targets; DivPrune and CDPruner: the N×N similarity of the projected tokens `p @ p.T`, p = 4d wide
         as LLaVA-1.5-7B's 4096; VisPruner: the N×N feature similarity `x @ x.T`) and cold / floor.
         DART prunes inside the LLM as its official code does: its cost is a forward, timed in bench/latency.
cold, warm and floor are interleaved repeat by repeat so that other load on the machine hits them alike, and
every cell is measured in `--runs` (3) runs spread over the benchmark, keeping the one with the lowest cold median.
Inputs are tests.reference.synthetic (d = 1024 features and keys, e = 768 joint width, 4d = 4096 projected width,
feature-layer keys d/16 = 64 wide, float32, CPU),
default slider parameters, torch's default thread count. `--markdown FILE` also writes the report.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from bench.common import machine
from reducers import REDUCERS, VisualTokens
from reducers.tome import merge_schedule
from tests import reference as ref

METHODS = ("prumerge", "prumerge+", "par", "visionzip", "divprune", "cdpruner", "vispruner", "tome", "pool",
           "fastv", "all", "none", "random", "uniform", "top-attention")
BUDGET = 64  # the shared budget slider's default (baselines, VisionZip, DivPrune, ToMe, pooling, FastV)
FASTV_LAYER = 2  # FastV's default K
REF_BUDGET_S = 20.0  # the reference loop gets at most about this much time per (size, method)


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    """Median seconds of `fn()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    return statistics.median(elapsed(fn) for _ in range(repeats))


def elapsed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def reference_call(method: str, inp: dict):
    """The reference loop for `method` with default parameters, or None where there is none."""
    x, k, a = inp["features"], inp["keys"], inp["cls_attn"]
    if method == "prumerge":
        return lambda: ref.prumerge(x, k, a)
    if method == "prumerge+":
        return lambda: ref.prumerge(x, k, a, plus=True)
    if method == "par":
        return lambda: ref.par(x, inp["joint"], inp["query"], inp["grid"])
    if method == "visionzip":
        return lambda: ref.visionzip(x, inp["feature_layer_attn"], inp["feature_layer_keys"], inp["cls_feature"],
                                     BUDGET)
    if method == "divprune":
        return lambda: ref.divprune(inp["projected"], BUDGET)
    if method == "cdpruner":
        return lambda: ref.cdpruner(inp["projected"], inp["joint"], inp["query"], BUDGET)
    if method == "vispruner":
        return lambda: ref.vispruner(x, inp["feature_layer_attn"], BUDGET)
    if method == "top-attention":
        return lambda: ref.top_attention(x, a, BUDGET)
    if method == "uniform":
        return lambda: ref.uniform(x, inp["grid"], BUDGET)
    if method == "tome":
        return lambda: ref.tome(x, k, BUDGET)
    if method == "pool":
        return lambda: ref.pool(x, inp["grid"], BUDGET)
    if method == "fastv":
        return lambda: ref.fastv(x, inp["lm_attn"], FASTV_LAYER, BUDGET)
    if method == "all":
        return lambda: ref.identity(x)
    return None  # random: the sample is defined by torch's generator; none: nothing to compute


def floor_call(method: str, inp: dict, red):
    """The dense product `method` cannot avoid, in the input dtype; None for the baselines and none."""
    if method == "par":
        x = inp["features"]
        return lambda: x @ x.T
    if method in ("prumerge", "prumerge+"):
        kn = F.normalize(inp["keys"], dim=-1)
        km = kn[red.kept].contiguous()
        return lambda: km @ kn.T
    if method == "tome":  # the same step shapes (and strides) as the reducer's matching
        kn = F.normalize(inp["keys"], dim=-1)
        sizes, n = [], kn.shape[0]
        for r in merge_schedule(n, BUDGET):
            sizes.append(n)
            n -= r
        return lambda: [kn[:s][0::2] @ kn[:s][1::2].T for s in sizes]
    if method == "pool":
        x = inp["features"]
        return lambda: x.sum(0)
    if method == "fastv":
        score = inp["lm_attn"][FASTV_LAYER - 1, 0]
        m = min(BUDGET, score.shape[0])
        return lambda: score.topk(m)
    if method == "visionzip":  # the merged patches (in a contextual group, not its target) against the targets
        kn = F.normalize(inp["feature_layer_keys"], dim=-1)
        merged = (red.groups >= 0) & ~red.kept_mask & ~torch.isin(torch.arange(red.n_tokens), red.trace.targets)
        km, kt = kn[merged].contiguous(), kn[red.trace.targets].contiguous()
        return lambda: km @ kt.T
    if method in ("divprune", "cdpruner"):
        pn = F.normalize(inp["projected"], dim=-1)
        return lambda: pn @ pn.T
    if method == "vispruner":
        x = inp["features"]
        return lambda: x @ x.T
    return None


def fmt_ms(seconds) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.2f}"


def fmt_ratio(value) -> str:
    return "n/a" if value is None else f"{value:.1f}×" if value >= 10 else f"{value:.2f}×"


def measure(reducer, inp: dict, method: str, repeats: int) -> dict:
    """cold, warm and floor interleaved repeat by repeat (so that load from other processes falls on all
    three alike), after two warm-up rounds."""
    warm_vt = VisualTokens(**inp)
    red = reducer(warm_vt)
    floor_fn = floor_call(method, inp, red)
    cold, warm, floor = [], [], []
    for i in range(repeats + 2):
        fresh = VisualTokens(**inp)  # built outside the timed region: nothing memoised
        times = (elapsed(lambda: reducer(fresh)), elapsed(lambda: reducer(warm_vt)))
        floor_s = elapsed(floor_fn) if floor_fn else None
        if i >= 2:
            cold.append(times[0])
            warm.append(times[1])
            if floor_s is not None:
                floor.append(floor_s)
    return dict(
        kept=red.n_kept, cold=statistics.median(cold), cold_min=min(cold), warm=statistics.median(warm),
        floor=statistics.median(floor) if floor else None, floor_min=min(floor) if floor else None,
    )


def run(sizes, repeats: int, runs: int = 1, d: int = 1024, e: int = 768) -> list[dict]:
    """One row per (size, method); with runs > 1 every cell is measured `runs` times, spread over the whole
    benchmark, and the run with the lowest cold median is kept (cold and floor of that same run)."""
    inputs = {grid: ref.synthetic(grid, d=d, e=e, seed=0) for grid in sizes}
    best: dict[tuple, dict] = {}
    for r in range(runs):
        for grid in sizes:
            for method in METHODS:
                m = measure(REDUCERS[method], inputs[grid], method, repeats)
                key = (grid, method)
                if key not in best or m["cold"] < best[key]["cold"]:
                    best[key] = m
        if runs > 1:
            print(f"run {r + 1}/{runs} done", file=sys.stderr, flush=True)
    rows = []
    for grid in sizes:
        inp = inputs[grid]
        for method in METHODS:
            ref_fn, ref_s, ref_note = reference_call(method, inp), None, ""
            if ref_fn is not None:
                once = elapsed(ref_fn)
                ref_n = max(1, min(repeats, int(REF_BUDGET_S / max(once, 1e-9))))
                ref_s = median_time(ref_fn, ref_n, warmup=0) if ref_n > 1 else once
                if ref_n < repeats:
                    ref_note = f"{ref_n} repeat{'s' if ref_n > 1 else ''}"
            else:
                ref_note = "no loop: torch RNG" if method == "random" else "no loop: nothing computed"
            row = dict(n=grid[0] * grid[1], grid=f"{grid[0]}×{grid[1]}", method=method, ref=ref_s,
                       ref_note=ref_note, **best[(grid, method)])
            row["speedup"] = ref_s / row["cold"] if ref_s else None
            row["over_floor"] = row["cold"] / row["floor"] if row["floor"] else None
            row["over_floor_min"] = row["cold_min"] / row["floor_min"] if row["floor"] else None
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


HEADER = (
    "| N (grid) | method | tokens to LLM | cold ms, median (min) | warm ms (slider move) | reference loop ms "
    "| loop / cold | floor ms, median (min) | cold / floor, medians (mins) |"
)
RULE = "|---|---|---:|---:|---:|---:|---:|---:|---:|"


def format_row(r: dict) -> str:
    ref_ms = fmt_ms(r["ref"]) + (f" ({r['ref_note']})" if r["ref_note"] else "")
    floor = "n/a" if r["floor"] is None else f"{fmt_ms(r['floor'])} ({fmt_ms(r['floor_min'])})"
    ratio = "n/a" if r["floor"] is None else f"{fmt_ratio(r['over_floor'])} ({fmt_ratio(r['over_floor_min'])})"
    return (
        f"| {r['n']} ({r['grid']}) | {r['method']} | {r['kept']} | {fmt_ms(r['cold'])} ({fmt_ms(r['cold_min'])}) "
        f"| {fmt_ms(r['warm'])} | {ref_ms} | {fmt_ratio(r['speedup'])} | {floor} | {ratio} |"
    )


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets, checked on the measured rows."""
    out = []
    for r in rows:
        if r["method"] in ("cdpruner", "vispruner") and r["n"] == 576:
            ok = r["over_floor"] is not None and r["over_floor"] <= 3
            out.append(f"{r['method']} N=576: cold {fmt_ratio(r['over_floor'])} its floor (min/min "
                       f"{fmt_ratio(r['over_floor_min'])}; target ≤ 3×: {'met' if ok else 'MISSED'})")
        if r["method"] == "prumerge+":
            fast = r["speedup"] is not None and r["speedup"] >= 5
            near = r["over_floor"] is not None and r["over_floor"] <= 4
            out.append(
                f"PruMerge+ N={r['n']}: {fmt_ratio(r['speedup'])} faster than its loop (target ≥ 5×: "
                f"{'met' if fast else 'MISSED'}), {fmt_ratio(r['over_floor'])} the M×N key product "
                f"(min/min {fmt_ratio(r['over_floor_min'])}; target ≤ 4×: {'met' if near else 'MISSED'})"
            )
        if r["method"] == "par" and r["n"] in (576, 2880):
            ok = r["over_floor"] is not None and r["over_floor"] <= 2.5
            out.append(
                f"PAR N={r['n']}: {fmt_ratio(r['over_floor'])} the N×N similarity product "
                f"(min/min {fmt_ratio(r['over_floor_min'])}; target ≤ 2.5×: {'met' if ok else 'MISSED'})"
            )
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per cell (median; ≥ 10 advised)")
    parser.add_argument("--sizes", default="24x24,48x60,64x64", help="comma-separated h×w grids")
    parser.add_argument("--d", type=int, default=1024, help="feature and key width")
    parser.add_argument("--runs", type=int, default=3,
                        help="measure every cell this many times and keep the run with the lowest cold median")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: leave torch's default)")
    parser.add_argument("--markdown", help="also write the report (header, table, targets) to this file")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shown = " ".join(a for a in argv if not a.startswith("--markdown") and a != args.markdown)
    sizes = [tuple(int(v) for v in s.lower().replace("×", "x").split("x")) for s in args.sizes.split(",")]
    lines = [
        f"# Reducer benchmark ({datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')})",
        "",
        f"Machine: {machine()}; load average before the run: {load()}.",
        "",
        f"`python -m bench.reducers{' ' + shown if shown else ''}`: median (and min) of {args.repeats} repeats "
        f"after 2 warm-up calls, cold / warm / floor interleaved repeat by repeat; every cell measured in "
        f"{args.runs} run(s) spread over the benchmark, the run with the lowest cold median kept (this filters "
        f"bursts of load from other processes on a shared machine); d = {args.d}, e = 768, float32, CPU, "
        f"default slider parameters (budget {BUDGET} for the baselines, VisionZip, DivPrune, ToMe, pooling and "
        f"FastV; FastV K = {FASTV_LAYER}, last-token row). "
        "**cold** = a fresh `VisualTokens` per repeat (built outside the timed region), so the memoised "
        "similarity / neighbour keys / clusters are NOT reused: what a new image costs. **warm** = the same "
        "`VisualTokens` again (cache hit: what a slider move costs). **reference loop** = tests/reference.py "
        "(Python loops over tokens, float64), fewer repeats where one call is slow (about "
        f"{REF_BUDGET_S:.0f} s per cell). **floor** = the dense product the method cannot avoid, same dtype: "
        "PAR the N×N feature similarity `x @ x.T`, PruMerge(+) the M×N key similarity `k[kept] @ k.T`, ToMe "
        "every step's ⌈n/2⌉×⌊n/2⌋ key similarity, pooling one pass `x.sum(0)` over the features, FastV the "
        "top-M of its N-long ranking row, VisionZip the (R − C)×C key similarity of the merged patches to the C "
        "targets (64-wide head-mean keys), DivPrune the N×N similarity of the projected tokens `p @ p.T` (p = 4d "
        "= 4096 wide).",
        "",
        HEADER,
        RULE,
    ]
    for line in lines:
        print(line, flush=True)
    rows = run(sizes, args.repeats, runs=args.runs, d=args.d)
    summary = [""] + ["- " + line for line in targets(rows)] + ["", f"Load average after the run: {load()}."]
    for line in summary:
        print(line)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines + [format_row(r) for r in rows] + summary) + "\n")


def load() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
