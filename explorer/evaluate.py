"""Batch answer fidelity: how much of the full-token answer survives each reduction, over a set of questions.

    python -m explorer.evaluate --images DIR --questions FILE.jsonl --methods random,top-attention \\
        --budgets 32,64 --out OUT [--model offline|ID] [--max-new-tokens 16] [--limit N]

FILE.jsonl holds one `{"image": name in DIR, "question": ..., "answer": optional}` per line (`answer` a string,
or a list of strings such as VQA's ten annotator answers). Per item the image is loaded and encoded once, and
the full-token answer and its teacher-forced score computed once; then every (method, budget) runs on the
encode's tokens: budget methods at each budget, adaptive methods (no budget control) once at their default
parameters with `budget: null`. Every reduction is built as the app builds it (`Explorer.reduce`): PAR's query
is the prompt through a CLIP text tower when the model has one, else the CLS token; FastV ranks by the LLM's own
attention for this prompt and prunes inside the LLM. A method that cannot run on an item is skipped with the
reason logged.

Outputs in OUT:

* rows.jsonl   one JSON object per (item, method, budget); the first row of every item is the full-token
               answer itself (method "all", budget null: match 1, F1 1, no log-prob drop, KL 0, and its own
               accuracy), the reference the other rows are read against. Fields: image, question, prompt,
               method, label, budget, params (dataclasses.asdict), n_tokens, n_kept, answer, full_answer, match,
               f1, logprob, logprob_full, logprob_drop, kl, prefill_s, score_s, flops {full, reduced, ratio},
               n_new_tokens, stop, model, reference, accuracy, accuracy_full (see `explorer.backend.fidelity`).
               `accuracy` is `fidelity.vqa_accuracy(answer, reference)`: the VQA-normalised exact match (1.0 /
               0.0) against a single reference, VQA's leave-one-out min(1, matches/3) against several; null
               without a reference.
* summary.csv  per method and budget: n, mean tokens kept, and the % of full-token fidelity kept — exact-match
               rate, mean F1 (×100), mean log-prob drop (nats/token), mean first-token KL (nats), accuracy and
               the full answers' accuracy on the same items and their ratio (when references are given), the
               FLOP ratio and mean prefill seconds.
* fidelity.html  mean log-prob drop and mean KL against mean tokens kept, one line per method (plotly,
               offline: plotly.js inlined); fidelity.png the same with matplotlib (skipped, and said so, when
               matplotlib is missing).
* run.json     the settings the rows depend on (model, clip, seed, max_new_tokens, prompt suffix); a rerun
               with other settings is refused rather than mixing rows of two models.

Resumable: rows already written (key: image, question, method, budget) are skipped on a rerun. Rows are
appended one whole line at a time (write, flush, fsync); a crash leaves at most a partial last line, which is
ignored when reading and cut off before appending again. At the end rank 0 rewrites rows.jsonl in a canonical
order (item order of the questions file, then the method order of --methods with "all" first, then the budget
order of --budgets) through a temporary file and an atomic rename.

Several processes (`accelerate launch --multi_gpu --num_processes N -m explorer.evaluate …`, or torchrun):
`PartialState.split_between_processes` gives each process a contiguous slice of the items; each appends its
rows to OUT/.rows.rank{R}.jsonl; after `wait_for_everyone` rank 0 gathers rows.jsonl and every rank file into
rows.jsonl in the canonical order and removes the rank files — so the rows equal a single-process run's
except the timing fields (`TIMING_FIELDS`), given the same torch thread count per process (float sums depend
on it). With --device cpu (or no GPU) the processes use gloo on the CPU. Note: `accelerate launch --cpu
--num_processes N` starts ONE process (accelerate runs multi-CPU jobs only through mpirun); use --multi_gpu
with --device cpu instead.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterable, Sequence

from reducers import REFERENCE, REDUCERS

from .backend.fidelity import fidelity, reference_fidelity, vqa_accuracy
from .config import OFFLINE, ExplorerConfig
from .errors import InputError
from .images import load_image
from .service import Explorer

ROWS = "rows.jsonl"
SUMMARY = "summary.csv"
PLOT = "fidelity"
RUN = "run.json"
RANK_FILE = ".rows.rank{rank}.jsonl"
RANK_GLOB = ".rows.rank*.jsonl"
# REFERENCE (reducers): the method of the full-token row
KEY_FIELDS = ("image", "question", "method", "budget")
TIMING_FIELDS = ("prefill_s", "score_s")  # differ from run to run; everything else is deterministic
DEFAULT_BUDGETS = "64,128,192"
SUMMARY_FIELDS = ("method", "label", "budget", "n", "n_kept", "tokens_pct", "match_pct", "f1_pct", "logprob_drop",
                  "kl", "accuracy_pct", "accuracy_full_pct", "accuracy_rel_pct", "flops_ratio", "prefill_s")

log = logging.getLogger("explorer.evaluate")


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Item:
    image: str
    question: str
    answer: str | tuple[str, ...] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.image, self.question)


def read_items(path: Path, limit: int | None = None) -> list[Item]:
    """The questions file's items in file order (blank lines skipped; a repeated image + question is kept
    once); ValueError naming the line for anything malformed."""
    items: list[Item] = []
    seen: set[tuple[str, str]] = set()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{number}: expected an object with image and question")
            image, question, answer = obj.get("image"), obj.get("question"), obj.get("answer")
            if not isinstance(image, str) or not image.strip():
                raise ValueError(f"{path}:{number}: 'image' must be a file name in the images folder")
            if not isinstance(question, str) or not question.strip():
                raise ValueError(f"{path}:{number}: 'question' must be a non-empty string")
            if isinstance(answer, list):
                if not answer or not all(isinstance(a, str) for a in answer):
                    raise ValueError(f"{path}:{number}: 'answer' must be a string or a non-empty list of strings")
                answer = tuple(answer)
            elif answer is not None and not isinstance(answer, str):
                raise ValueError(f"{path}:{number}: 'answer' must be a string or a non-empty list of strings")
            item = Item(image, question, answer)
            if item.key in seen:
                log.warning("%s:%d repeats image %r with the same question; kept once", path, number, image)
                continue
            seen.add(item.key)
            items.append(item)
            if limit is not None and len(items) >= limit:
                break
    return items


def parse_methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in REDUCERS]
    if unknown or not names:
        raise ValueError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(REDUCERS)}")
    return list(dict.fromkeys(names))


def parse_budgets(text: str) -> list[int]:
    try:
        budgets = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"budgets must be whole numbers separated by commas, got {text!r}") from None
    if any(b < 1 for b in budgets):
        raise ValueError(f"budgets must be ≥ 1, got {text!r}")
    return list(dict.fromkeys(budgets))


def plan(methods: Sequence[str], budgets: Sequence[int]) -> list[tuple[str, int | None]]:
    """(method, budget) units in output order: the full-token row first, then each method at each budget
    (budget methods) or once with budget None (adaptive methods)."""
    units: list[tuple[str, int | None]] = [(REFERENCE, None)]
    for method in methods:
        if method == REFERENCE:
            continue  # the full-token row is always written
        if REDUCERS[method].budgeted:
            units.extend((method, b) for b in budgets)
        else:
            units.append((method, None))
    return units


# --------------------------------------------------------------------------------------------------
# Rows on disk: whole lines only
# --------------------------------------------------------------------------------------------------
def row_key(row: dict) -> tuple:
    return tuple(row[k] for k in KEY_FIELDS)


def read_rows(path: Path) -> list[dict]:
    """The complete rows of a JSONL file; a last line without its newline (a write cut short) is ignored."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    rows = []
    for number, line in enumerate(data[:end].splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{number} is not a JSON row; fix or remove that line") from None
    return rows


class Journal:
    """Append-only JSONL rows: each `append` writes one whole line, flushes and fsyncs it. Opening cuts off
    a partial last line left by a crash, so the next row starts on a line of its own."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "ab+")
        size = self.file.seek(0, os.SEEK_END)
        if size:
            self.file.seek(max(0, size - 1))
            if self.file.read(1) != b"\n":
                self.file.seek(0)
                data = self.file.read()
                self.file.truncate(data.rfind(b"\n") + 1)
        self.count = 0

    def append(self, row: dict) -> None:
        self.file.write((dumps(row) + "\n").encode("utf-8"))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.count += 1

    def close(self) -> None:
        self.file.close()


def _finite(value):
    """JSON-safe copy: non-finite floats → None (strict JSON has no NaN/Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(row: dict) -> str:
    return json.dumps(_finite(row), ensure_ascii=False, allow_nan=False)


def _tmp_path(path: Path) -> Path:
    """A temporary name beside `path`, private to this process (created with the usual permissions)."""
    return path.parent / f".{path.name}.{os.getpid()}.tmp"


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write `content` (text as UTF-8) to a temporary file beside `path`, then rename it over `path` (never
    half a file)."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def journal_files(out: Path) -> list[Path]:
    """rows.jsonl, then the per-rank files of this or an interrupted earlier run, by rank."""
    ranks = sorted(out.glob(RANK_GLOB), key=lambda p: (len(p.name), p.name))
    return [out / ROWS, *ranks]


def done_keys(out: Path) -> set[tuple]:
    return {row_key(r) for path in journal_files(out) for r in read_rows(path)}


def gather(out: Path, items: Sequence[Item], units: Sequence[tuple[str, int | None]]) -> list[dict]:
    """Every row of rows.jsonl and the rank files, once per key, in the canonical order: items in file order,
    units in `plan` order; rows of items or units not in this run (an earlier run's) follow in their order."""
    item_pos = {item.key: i for i, item in enumerate(items)}
    unit_pos = {unit: j for j, unit in enumerate(units)}
    rows: dict[tuple, dict] = {}
    for path in journal_files(out):
        for row in read_rows(path):
            rows.setdefault(row_key(row), row)

    def order(indexed):
        seq, row = indexed
        i = item_pos.get((row["image"], row["question"]))
        j = unit_pos.get((row["method"], row["budget"]))
        return (0, i, j, 0) if i is not None and j is not None else (1, 0, 0, seq)

    return [row for _, row in sorted(enumerate(rows.values()), key=order)]


def check_settings(out: Path, settings: dict, write: bool) -> None:
    """Refuse (ValueError) when OUT holds rows made with other settings; record them on a first run."""
    path = out / RUN
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            said = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise ValueError(f"{out} holds rows made with other settings ({said}); use another --out")
    elif write:
        write_atomic(path, json.dumps(settings, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# One item
# --------------------------------------------------------------------------------------------------
class Skips:
    """Logs each distinct reason for skipping once."""

    def __init__(self):
        self.seen: set[str] = set()

    def __call__(self, message: str) -> None:
        if message not in self.seen:
            self.seen.add(message)
            log.warning("%s", message)


def evaluate_item(explorer, item: Item, units: Sequence[tuple[str, int | None]], images: Path, args,
                  done: set[tuple], write: Callable[[dict], None], skip: Skips, advance: Callable[[int], None]) -> int:
    """Write the missing rows of one item; returns how many were written. Each reduction is built exactly as
    the app builds it (`Explorer.reduce`: the same VisualTokens, PAR's query — the prompt through a CLIP text
    tower, else the CLS token — and FastV's LLM attention for this prompt), at the method's default settings
    with the budget set."""
    backend = explorer.backend()
    todo = [u for u in units if (item.image, item.question, *u) not in done]
    advance(len(units) - len(todo))
    if not todo:
        return 0
    try:
        path = (images / item.image).resolve()
        if not path.is_relative_to(images.resolve()):
            raise InputError("the image path leads outside the images folder")
        image = load_image(path, args.max_pixels)
    except InputError as err:
        skip(f"skipped {item.image!r}: {err}")
        advance(len(todo))
        return 0
    enc = backend.encode(image)
    prompt = item.question + args.prompt_suffix
    full_answer = backend.answer(enc, prompt, None, args.max_new_tokens)
    full_score = backend.score(enc, prompt, None, full_answer.token_ids)
    accuracy_full = None if item.answer is None else vqa_accuracy(full_answer.text, item.answer)
    written = 0
    for method, budget in todo:
        entry = REDUCERS[method]
        if method == REFERENCE:
            params: dict = {}
            result = reference_fidelity(backend, enc, prompt, full_answer, full_score)
        else:
            try:
                settings = explorer.settings({"method": method, **({entry.budget_field: budget} if budget else {})})
                reduction, _, _ = explorer.reduce(backend, enc, prompt, settings)
                result = fidelity(backend, enc, prompt, reduction, full_answer, full_score, args.max_new_tokens)
            except (ValueError, InputError) as err:
                skip(f"skipped {method} (budget {budget}) on {item.image!r}: {err}")
                advance(1)
                continue
            params = dataclasses.asdict(settings.params)
        accuracy = None if item.answer is None else vqa_accuracy(result["answer"], item.answer)
        write({
            "image": item.image, "question": item.question, "prompt": prompt,
            "method": method, "label": entry.label, "budget": budget, "params": params,
            "n_tokens": enc.tokens.n, **result,
            "model": backend.name,
            "reference": list(item.answer) if isinstance(item.answer, tuple) else item.answer,
            "accuracy": accuracy, "accuracy_full": accuracy_full,
        })
        written += 1
        advance(1)
    return written


# --------------------------------------------------------------------------------------------------
# Summary and plot
# --------------------------------------------------------------------------------------------------
def _mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def summarise(rows: Sequence[dict]) -> list[dict]:
    """One record per (method, budget) in the rows' order: means over its rows (see the module docstring)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["budget"]), []).append(row)
    out = []
    for (method, budget), group in groups.items():
        answered = [r for r in group if r.get("accuracy") is not None]
        acc = _mean(r["accuracy"] for r in answered)
        acc_full = _mean(r["accuracy_full"] for r in answered)
        out.append({
            "method": method,
            "label": group[0].get("label", method),
            "budget": budget,
            "n": len(group),
            "n_kept": _mean(r["n_kept"] for r in group),
            "tokens_pct": _mean(100.0 * r["n_kept"] / r["n_tokens"] for r in group),
            "match_pct": _mean(100.0 * r["match"] for r in group),
            "f1_pct": _mean(100.0 * r["f1"] for r in group),
            "logprob_drop": _mean(r["logprob_drop"] for r in group),
            "kl": _mean(r["kl"] for r in group),
            "accuracy_pct": None if acc is None else 100.0 * acc,
            "accuracy_full_pct": None if acc_full is None else 100.0 * acc_full,
            "accuracy_rel_pct": 100.0 * acc / acc_full if acc is not None and acc_full else None,
            "flops_ratio": _mean(r["flops"]["ratio"] for r in group),
            "prefill_s": _mean(r["prefill_s"] for r in group),
        })
    return out


def write_summary(summary: Sequence[dict], path: Path) -> None:
    def cell(value):
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.6g}"
        return value

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
    writer.writeheader()
    for record in summary:
        writer.writerow({k: cell(record[k]) for k in SUMMARY_FIELDS})
    write_atomic(path, text.getvalue())


def _curves(summary: Sequence[dict]) -> dict[str, list[dict]]:
    """method → its summary records sorted by tokens kept (an adaptive method is one point)."""
    curves: dict[str, list[dict]] = {}
    for record in summary:
        curves.setdefault(record["method"], []).append(record)
    return {m: sorted(recs, key=lambda r: r["n_kept"]) for m, recs in curves.items()}


PANELS = (("logprob_drop", "mean log-prob drop of the full answer (nats/token)"),
          ("kl", "first-token KL(full ‖ reduced) (nats)"))


def write_plot_html(summary: Sequence[dict], path: Path, title: str) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=[label for _, label in PANELS], horizontal_spacing=0.1)
    palette = ["#3a86ff", "#d62828", "#2a9d8f", "#f5b700", "#8338ec", "#fb5607", "#6c757d", "#06d6a0"]
    for index, (method, recs) in enumerate(_curves(summary).items()):
        colour = "#111827" if method == REFERENCE else palette[index % len(palette)]
        for col, (field, _) in enumerate(PANELS, 1):
            fig.add_trace(go.Scatter(
                x=[r["n_kept"] for r in recs], y=[r[field] for r in recs], mode="lines+markers",
                name=recs[0]["label"], legendgroup=method, showlegend=col == 1,
                line=dict(color=colour), marker=dict(symbol="diamond" if method == REFERENCE else "circle", size=8),
                customdata=[[r["budget"], r["n"], r["match_pct"], r["f1_pct"]] for r in recs],
                hovertemplate=("%{fullData.name}<br>tokens kept %{x:.1f}<br>budget %{customdata[0]}<br>"
                               "value %{y:.4g}<br>match %{customdata[2]:.1f} %, F1 %{customdata[3]:.1f} %"
                               "<br>n = %{customdata[1]}<extra></extra>"),
            ), row=1, col=col)
        fig.update_xaxes(title_text="visual tokens kept (mean)")
    fig.update_layout(title=title, template="plotly_white", height=460, width=1100)
    html = fig.to_html(include_plotlyjs=True, full_html=True)
    write_atomic(path, html)


def write_plot_png(summary: Sequence[dict], path: Path, title: str) -> bool:
    """The same two panels with matplotlib (Agg canvas, no pyplot state); False when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(11, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for method, recs in _curves(summary).items():
        for ax, (field, label) in zip(axes, PANELS):
            xs = [r["n_kept"] for r in recs]
            ys = [r[field] if r[field] is not None else math.nan for r in recs]
            style = dict(color="black", marker="D") if method == REFERENCE else dict(marker="o")
            ax.plot(xs, ys, label=recs[0]["label"], **style)
            ax.set_title(label, fontsize=10)
            ax.set_xlabel("visual tokens kept (mean)")
            ax.grid(alpha=0.3)
    if summary:
        axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    write_atomic(path, png.getvalue())
    return True


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    methods = ",".join(m for m in REDUCERS if m != REFERENCE)
    p = argparse.ArgumentParser(prog="python -m explorer.evaluate",
                                description="How much of the full-token answer survives each visual-token reduction.")
    p.add_argument("--images", required=True, type=Path, help="folder of the images named in the questions file")
    p.add_argument("--questions", required=True, type=Path,
                   help='JSONL: {"image": name, "question": ..., "answer": optional string or list} per line')
    p.add_argument("--methods", default=methods, help=f"comma-separated registry names (default: {methods})")
    p.add_argument("--budgets", default=DEFAULT_BUDGETS,
                   help=f"token budgets for the budget methods (default: {DEFAULT_BUDGETS})")
    p.add_argument("--out", required=True, type=Path, help="output folder (rows.jsonl, summary.csv, fidelity.html)")
    p.add_argument("--model", default=OFFLINE, help="'offline' (default) or a LLaVA-1.5-style hub id / local folder")
    p.add_argument("--clip", default=None, help="CLIP hub id / folder for PAR's text side, or 'offline'")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--seed", type=int, default=0, help="seed of the offline default's random weights")
    p.add_argument("--max-new-tokens", type=int, default=16, help="greedy answer length limit (default 16)")
    p.add_argument("--prompt-suffix", default="",
                   help='appended to every question, e.g. "\\nAnswer the question using a single word or phrase."')
    p.add_argument("--limit", type=int, default=None, help="only the first N items")
    p.add_argument("--max-pixels", type=int, default=ExplorerConfig.max_image_pixels, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _use_cpu(device: str) -> bool:
    import torch

    if device == "cpu":
        return True
    if device != "auto":
        return False
    mps = getattr(torch.backends, "mps", None)
    return not torch.cuda.is_available() and not (mps is not None and mps.is_available())


def _warn_single_cpu_launch(state) -> None:
    env = os.environ
    if (state.num_processes == 1 and env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
            and "MASTER_ADDR" in env and "WORLD_SIZE" not in env):
        log.warning("accelerate launch --cpu with several processes starts only one (multi-CPU needs mpirun); "
                    "for N CPU processes run: accelerate launch --multi_gpu --num_processes N -m explorer.evaluate "
                    "… --device cpu")


def main(argv: Sequence[str] | None = None, backend_factory: Callable[[ExplorerConfig], object] | None = None) -> int:
    """Run the batch evaluation (see the module docstring). `backend_factory(config)` replaces
    `load_backend` (tests inject the tiny LLaVA). Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        methods = parse_methods(args.methods)
        budgets = parse_budgets(args.budgets)
    except ValueError as err:
        parser.error(str(err))
    if any(REDUCERS[m].budgeted for m in methods) and not budgets:
        parser.error("budget methods were asked for but --budgets is empty")
    if args.max_new_tokens < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--max-new-tokens and --limit must be ≥ 1")
    if args.max_new_tokens > ExplorerConfig.max_new_tokens_limit:
        parser.error(f"--max-new-tokens must be at most {ExplorerConfig.max_new_tokens_limit}, the app's limit")
    if not args.images.is_dir():
        parser.error(f"--images: no such folder: {args.images}")
    if not args.questions.is_file():
        parser.error(f"--questions: no such file: {args.questions}")

    from accelerate import PartialState

    state = PartialState(cpu=_use_cpu(args.device), timeout=timedelta(hours=24))
    rank, world = state.process_index, state.num_processes
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"[evaluate{f' rank {rank}' if world > 1 else ''}] %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        _warn_single_cpu_launch(state)
        status = _run(args, methods, budgets, state, backend_factory)
        if world > 1:
            state.destroy_process_group()
        return status
    finally:
        log.removeHandler(handler)


def _run(args, methods, budgets, state, backend_factory) -> int:
    from tqdm.auto import tqdm

    rank, world = state.process_index, state.num_processes
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    try:
        items = read_items(args.questions, args.limit)
    except ValueError as err:
        log.error("%s", err)
        return 2
    units = plan(methods, budgets)
    settings = {"model": args.model, "clip": args.clip, "seed": args.seed, "max_new_tokens": args.max_new_tokens,
                "prompt_suffix": args.prompt_suffix}
    try:
        check_settings(out, settings, write=state.is_main_process)
    except ValueError as err:
        log.error("%s", err)
        return 2

    device = args.device
    if world > 1 and getattr(state.device, "type", "cpu") not in ("cpu", "mps") and device == "auto":
        device = str(state.device)  # one GPU per process
    config = ExplorerConfig(model=args.model, clip=args.clip, device=device, max_new_tokens=args.max_new_tokens,
                            seed=args.seed, max_image_pixels=args.max_pixels)
    if backend_factory is None:
        from .backend.models import load_backend

        backend_factory = load_backend
    backend = backend_factory(config)
    explorer = Explorer(config, loader=lambda _config, progress=None: backend)
    if getattr(backend, "notice", "") and state.is_main_process:
        log.info("%s: %s", backend.name, backend.notice)
    done = done_keys(out)
    state.wait_for_everyone()  # every process has read what earlier runs wrote before anyone appends

    journal = Journal(out / (ROWS if world == 1 else RANK_FILE.format(rank=rank)))
    skip = Skips()
    with state.split_between_processes(items) as mine:
        mine = list(mine)
        bar = tqdm(total=len(mine) * len(units), desc=f"rank {rank}" if world > 1 else "fidelity", unit="row",
                   position=rank, disable=args.no_progress, file=sys.stderr, dynamic_ncols=True)
        try:
            for item in mine:
                evaluate_item(explorer, item, units, args.images, args, done, journal.append, skip, bar.update)
        finally:
            bar.close()
            journal.close()
    log.info("wrote %d new rows for %d items", journal.count, len(mine))
    state.wait_for_everyone()

    if state.is_main_process:
        rows = gather(out, items, units)
        write_atomic(out / ROWS, "".join(dumps(r) + "\n" for r in rows))
        for path in out.glob(RANK_GLOB):
            path.unlink()
        summary = summarise(rows)
        write_summary(summary, out / SUMMARY)
        title = f"Answer fidelity — {rows[0]['model'] if rows else backend.name}, {len(items)} items"
        write_plot_html(summary, out / f"{PLOT}.html", title)
        if write_plot_png(summary, out / f"{PLOT}.png", title):
            log.info("wrote %s, %s, %s.html and %s.png in %s", ROWS, SUMMARY, PLOT, PLOT, out)
        else:
            log.info("wrote %s, %s and %s.html in %s (no PNG: matplotlib is not installed)", ROWS, SUMMARY, PLOT, out)
    state.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main())
