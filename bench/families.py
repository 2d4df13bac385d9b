"""Per-family latency rows: slider moves at each family's real visual-token count, and the tiny checkpoints.

    python -m bench.families [--moves 100]

* in-process slider move (Explorer.explore, encode cached, per-patch data off as on a move) on the synthetic
  backend at the token counts the families feed: 576 (LLaVA-1.5, 24×24), 1280 (Qwen2.5-VL merged tokens of a
  ~1000×1000 px image, 32×40) and 2880 (LLaVA-NeXT's base + 2×2 tiles, 48×60); targets p95 ≤ 60 ms at 1280 and
  ≤ 120 ms at 2880 (issue 20);
* the tiny LLaVA-NeXT checkpoint of the tests (anyres 56-px crops, 4×4 patches each): encode (every crop through
  the hooked tower) and a reducer + LM-input build for PruMerge, on random images of three shapes.

The machine may be shared with other work: the first line says what it ran on; compare rows of one run only.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.common import machine  # noqa: E402
from bench.latency import MOVES, moves, row, settings  # noqa: E402

IMAGE = "assets/chelsea.jpg"
PROMPT = "What colour is the cat's fur?"
COUNTS = (("LLaVA-1.5", (24, 24), 30), ("Qwen2.5-VL (merged)", (32, 40), 60), ("LLaVA-NeXT", (48, 60), 120))


def slider_moves(explorer, n_moves: int) -> dict[str, list[float]]:
    _, state = explorer.explore(IMAGE, PROMPT, settings(explorer, "par", "tau", 0.3), {})  # encode once
    out = {}
    for method, name, (lo, hi) in MOVES:
        explorer.explore(IMAGE, PROMPT, settings(explorer, method, name, lo), state)
        times = []
        for value in moves(lo, hi, n_moves):
            t = time.perf_counter()
            explorer.explore(IMAGE, PROMPT, settings(explorer, method, name, value), state, with_per_patch=False)
            times.append(time.perf_counter() - t)
        out[method] = times
    return out


def tiny_next(repeats: int) -> dict[str, list[float]]:
    from reducers import REDUCERS
    from tests import tiny

    backend = tiny.tiny_llava_next_backend("cpu")
    out = {"encode (all crops, hooks)": [], "PruMerge + LM visual input": []}
    for i in range(repeats):
        img = tiny.image(100 + i, ((80, 64), (64, 120), (200, 50))[i % 3])
        t = time.perf_counter()
        enc = backend.encode(img)
        out["encode (all crops, hooks)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        red = REDUCERS["prumerge"](enc.tokens)
        backend._visual_input(enc, red)(red.tokens)
        out["PruMerge + LM visual input"].append(time.perf_counter() - t)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moves", type=int, default=100)
    args = parser.parse_args(argv)
    from explorer.backend.synthetic import SyntheticBackend
    from explorer.config import ExplorerConfig
    from explorer.service import Explorer

    print(f"Machine: {machine()}\n")
    print("| family (token count) | what | moves | p50 ms | p95 ms | target p95 ms | |\n|---|---|---:|---:|---:|---:|---|")
    for family, grid, target in COUNTS:
        backend = SyntheticBackend(grid=grid, width=1024)
        explorer = Explorer(ExplorerConfig(), loader=lambda config, progress=None, b=backend: b)
        try:
            for method, times in slider_moves(explorer, args.moves).items():
                print(f"| {family} synthetic (N = {grid[0] * grid[1]}) " + row(method, times, target))
        finally:
            explorer.close()
    for what, times in tiny_next(12).items():
        print("| LLaVA-NeXT tiny (anyres, 56-px crops) " + row(what, times))


if __name__ == "__main__":
    main()
