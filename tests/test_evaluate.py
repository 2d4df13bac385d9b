"""The batch fidelity tool (explorer/evaluate.py) on the tiny seeded LLaVA: rows, resuming, summary, plots, and a
real 2-process accelerate run that must give exactly the single-process rows (timing fields excluded)."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from explorer import evaluate as ev
from tests import evaluate_tiny, tiny
from tests.tiny import block_network  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("block_network")

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    {"image": "a.png", "question": "what color is the car ?", "answer": "red"},
    {"image": "b.png", "question": "how many people are there ?", "answer": ["2", "two", "3"]},
    {"image": "c.png", "question": "is this a cat ?"},
]
METHODS = ["random", "top-attention"]
BUDGETS = [4, 8]
N_UNITS = 1 + len(METHODS) * len(BUDGETS)
ROW_FIELDS = {"image", "question", "prompt", "method", "label", "budget", "params", "n_tokens", "n_kept", "answer",
              "full_answer", "match", "f1", "logprob", "logprob_full", "logprob_drop", "kl", "prefill_s", "score_s",
              "flops", "n_new_tokens", "stop", "model", "reference", "accuracy", "accuracy_full", "equivalent_tokens",
              "llm_layers"}


@pytest.fixture()
def data(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i, q in enumerate(QUESTIONS):
        tiny.image(i + 10).save(images / q["image"])
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return images, questions


def argv(data, out, methods=METHODS, budgets=BUDGETS, *extra):
    images, questions = data
    return ["--images", str(images), "--questions", str(questions), "--methods", ",".join(methods),
            "--budgets", ",".join(map(str, budgets)), "--out", str(out), "--max-new-tokens", "4", "--no-progress",
            *extra]


def run(data, out, *extra, methods=METHODS, budgets=BUDGETS) -> int:
    return evaluate_tiny.main(argv(data, out, methods, budgets, *extra))


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / ev.ROWS).read_text().splitlines()]


def untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ev.TIMING_FIELDS} for r in records]


# ----------------------------------------------------------------------------------------------------------
# Rows, summary, plots
# ----------------------------------------------------------------------------------------------------------
def test_rows_summary_and_plots(data, tmp_path):
    out = tmp_path / "out"
    assert run(data, out) == 0
    got = rows(out)
    assert len(got) == len(QUESTIONS) * N_UNITS
    units = ev.plan(METHODS, BUDGETS)
    assert units == [("all", None), ("random", 4), ("random", 8), ("top-attention", 4), ("top-attention", 8)]
    # canonical order: items in file order, then the plan's order
    assert [(r["image"], r["method"], r["budget"]) for r in got] == [
        (q["image"], m, b) for q in QUESTIONS for m, b in units]
    for r in got:
        assert set(r) == ROW_FIELDS, set(r) ^ ROW_FIELDS
        assert r["model"] == "tiny-llava" and r["n_tokens"] == tiny.N_PATCHES
        assert 0.0 <= r["match"] <= 1.0 and 0.0 <= r["f1"] <= 1.0
        assert math.isfinite(r["logprob_drop"]) and math.isfinite(r["logprob"]) and r["kl"] >= 0.0
        assert r["logprob_drop"] == pytest.approx(r["logprob_full"] - r["logprob"], abs=1e-9)
        assert set(r["flops"]) == {"full", "reduced", "ratio"} and 0 < r["flops"]["ratio"] <= 1
        assert r["prefill_s"] > 0 and r["score_s"] > 0
        if r["method"] == "all":
            assert (r["budget"], r["n_kept"], r["match"], r["f1"], r["logprob_drop"], r["kl"], r["params"]) == (
                None, tiny.N_PATCHES, 1.0, 1.0, 0.0, 0.0, {})
            assert r["answer"] == r["full_answer"] and r["flops"]["ratio"] == 1.0
        else:
            assert r["n_kept"] == r["budget"] and r["params"]["budget"] == r["budget"]
            assert r["kl"] > 0  # dropping tokens moves the tiny model's first-token distribution
        reference = next(q.get("answer") for q in QUESTIONS if q["image"] == r["image"])
        if reference is None:
            assert r["reference"] is None and r["accuracy"] is None and r["accuracy_full"] is None
        else:
            assert r["reference"] == reference and 0.0 <= r["accuracy"] <= 1.0
    # every row of an item shares its full answer and the full answer's score
    for q in QUESTIONS:
        mine = [r for r in got if r["image"] == q["image"]]
        assert len({r["full_answer"] for r in mine}) == 1 and len({r["logprob_full"] for r in mine}) == 1

    with open(out / ev.SUMMARY, newline="") as f:
        summary = list(csv.DictReader(f))
    assert [(s["method"], s["budget"]) for s in summary] == [(m, "" if b is None else str(b)) for m, b in units]
    assert list(summary[0]) == list(ev.SUMMARY_FIELDS)
    for s in summary:
        assert int(s["n"]) == len(QUESTIONS)
        mine = [r for r in got if r["method"] == s["method"] and str(r["budget"] or "") == s["budget"]]
        assert float(s["match_pct"]) == pytest.approx(100 * sum(r["match"] for r in mine) / len(mine), rel=1e-5)
        assert float(s["f1_pct"]) == pytest.approx(100 * sum(r["f1"] for r in mine) / len(mine), rel=1e-5)
        assert float(s["kl"]) == pytest.approx(sum(r["kl"] for r in mine) / len(mine), rel=1e-5, abs=1e-12)
        assert float(s["logprob_drop"]) == pytest.approx(sum(r["logprob_drop"] for r in mine) / len(mine),
                                                         rel=1e-5, abs=1e-12)
        assert s["accuracy_pct"] != ""  # two of the three items have references
    assert summary[0]["match_pct"] == "100" and summary[0]["kl"] == "0"

    html = (out / f"{ev.PLOT}.html").read_text()
    assert "Top-M CLS attention" in html and len(html) > 1_000_000  # plotly.js inlined: opens offline
    assert not re.search(r"<script[^>]*\bsrc=", html)
    assert (out / f"{ev.PLOT}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / ev.RUN).read_text())["max_new_tokens"] == 4
    assert not list(out.glob(ev.RANK_GLOB)) and not list(out.glob(".*.tmp"))


def test_adaptive_methods_run_once_at_their_defaults(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(data, out, methods=["prumerge", "par", "random"], budgets=[6]) == 0
    got = rows(out)
    assert len(got) == len(QUESTIONS) * 4
    adaptive = [r for r in got if r["method"] in ("prumerge", "par")]
    assert len(adaptive) == 2 * len(QUESTIONS) and all(r["budget"] is None for r in adaptive)
    par = [r for r in adaptive if r["method"] == "par"]
    assert all(set(r["params"]) >= {"tau"} for r in par)
    assert all(1 <= r["n_kept"] <= tiny.N_PATCHES for r in adaptive)
    assert [r["n_kept"] for r in got if r["method"] == "random"] == [6] * len(QUESTIONS)


def test_methods_run_as_the_app_runs_them_and_failures_are_skipped_with_a_reason(data, tmp_path, capsys,
                                                                                  monkeypatch):
    """Without a text tower PAR's query is the CLS token, as in the app (not skipped); a method that cannot run
    on an item is skipped with its reason, logged once."""
    from explorer.errors import InputError

    backend = tiny.tiny_backend("cpu")
    backend.has_text_tower = False

    def no_attention(enc, prompt):
        raise InputError("this LLM's attention cannot be read")

    monkeypatch.setattr(backend, "lm_attention", no_attention)
    out = tmp_path / "out"
    assert ev.main(argv(data, out, ["par", "random", "fastv"], [4]), backend_factory=lambda config: backend) == 0
    err = capsys.readouterr().err
    assert err.count("this LLM's attention cannot be read") == 3  # once per item: the reason names the image
    assert {r["method"] for r in rows(out)} == {"all", "par", "random"}


# ----------------------------------------------------------------------------------------------------------
# Resuming
# ----------------------------------------------------------------------------------------------------------
def test_rerun_skips_done_rows(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(data, out) == 0
    first = (out / ev.ROWS).read_bytes()
    capsys.readouterr()
    assert run(data, out) == 0
    assert (out / ev.ROWS).read_bytes() == first  # nothing recomputed, nothing duplicated
    assert "wrote 0 new rows" in capsys.readouterr().err

    lines = first.decode().splitlines(keepends=True)
    (out / ev.ROWS).write_text("".join(lines[:-1]))  # delete the last row
    assert run(data, out) == 0
    assert "wrote 1 new rows" in capsys.readouterr().err
    again = (out / ev.ROWS).read_text().splitlines(keepends=True)
    assert again[:-1] == lines[:-1]
    assert untimed([json.loads(again[-1])]) == untimed([json.loads(lines[-1])])


def test_a_crash_leaves_whole_lines_and_the_rerun_completes_them(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(data, out) == 0
    full = rows(out)
    lines = (out / ev.ROWS).read_text().splitlines(keepends=True)
    # rows 0..5 survived, row 6 was cut mid-write; the rest never came
    (out / ev.ROWS).write_text("".join(lines[:6]) + lines[6][: len(lines[6]) // 2])
    assert len(ev.read_rows(out / ev.ROWS)) == 6
    capsys.readouterr()
    assert run(data, out) == 0
    assert f"wrote {len(full) - 6} new rows" in capsys.readouterr().err
    assert untimed(rows(out)) == untimed(full)


def test_rows_left_in_rank_files_are_gathered(data, tmp_path):
    """A sharded run that died before gathering leaves rows in .rows.rankR.jsonl: a rerun (here with one
    process) skips them and gathers them into rows.jsonl."""
    out = tmp_path / "out"
    assert run(data, out) == 0
    lines = (out / ev.ROWS).read_text().splitlines(keepends=True)
    (out / ev.ROWS).write_text("".join(lines[:5]))
    (out / ".rows.rank1.jsonl").write_text("".join(lines[10:]))
    (out / ".rows.rank0.jsonl").write_text("".join(lines[5:8]) + lines[8][:20])  # cut mid-line
    assert len(ev.done_keys(out)) == 5 + 5 + 3
    assert run(data, out) == 0
    got = rows(out)
    assert len(got) == len(lines) and not list(out.glob(ev.RANK_GLOB))
    assert [ev.row_key(r) for r in got] == [ev.row_key(json.loads(x)) for x in lines]
    for i in list(range(8)) + list(range(10, 15)):  # kept as written, not recomputed
        assert got[i] == json.loads(lines[i])


def test_journal_cuts_a_partial_last_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2')
    assert ev.read_rows(path) == [{"a": 1}]
    journal = ev.Journal(path)
    journal.append({"a": 3})
    journal.close()
    assert ev.read_rows(path) == [{"a": 1}, {"a": 3}]
    path.write_bytes(b'{"a": 1}\nnot json\n')
    with pytest.raises(ValueError, match=":2"):
        ev.read_rows(path)


def test_rows_are_strict_json():
    assert ev.dumps({"x": float("nan"), "y": [float("inf"), 1.5]}) == '{"x": null, "y": [null, 1.5]}'


# ----------------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------------
def test_other_settings_are_refused(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(data, out) == 0
    assert run(data, out, "--max-new-tokens", "5") == 2
    assert "other settings" in capsys.readouterr().err


def test_bad_questions_and_images(data, tmp_path, capsys):
    images, questions = data
    (images / "empty.png").write_bytes(b"")
    questions.write_text(questions.read_text() + json.dumps({"image": "empty.png", "question": "what ?"}) + "\n"
                         + json.dumps({"image": "../a.png", "question": "what ?"}) + "\n"
                         + json.dumps(QUESTIONS[0]) + "\n")  # a repeat: kept once
    out = tmp_path / "out"
    assert run(data, out, methods=["random"], budgets=[4]) == 0
    err = capsys.readouterr().err
    assert "skipped 'empty.png'" in err and "empty (0 bytes)" in err
    assert "outside the images folder" in err and "repeats image 'a.png'" in err
    assert {r["image"] for r in rows(out)} == {"a.png", "b.png", "c.png"}
    questions.write_text('{"image": "a.png"}\n')
    assert run(data, tmp_path / "out2") == 2
    assert "questions.jsonl:1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(data, tmp_path / "out3", methods=["nope"])
    assert "unknown method" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(data, tmp_path / "out4", "--max-new-tokens", "1000")
    assert "--max-new-tokens must be at most 256" in capsys.readouterr().err


def test_limit_takes_the_first_items(data, tmp_path):
    out = tmp_path / "out"
    assert run(data, out, "--limit", "2", methods=["random"], budgets=[4]) == 0
    assert {r["image"] for r in rows(out)} == {"a.png", "b.png"}


# ----------------------------------------------------------------------------------------------------------
# Two real processes under accelerate
# ----------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(data, tmp_path):
    single = tmp_path / "single"
    assert run(data, single) == 0
    sharded = tmp_path / "sharded"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "tests.evaluate_tiny",
           *argv(data, sharded), "--device", "cpu"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "[evaluate rank 1]" in proc.stderr, "the second process never ran"
    print(f"2-process accelerate run: {seconds:.1f} s")
    assert untimed(rows(sharded)) == untimed(rows(single))
    assert not list(sharded.glob(ev.RANK_GLOB))
    assert (sharded / ev.SUMMARY).exists() and (sharded / f"{ev.PLOT}.html").exists()
