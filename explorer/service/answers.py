"""The LLM's answers: greedy answers from all tokens and from the reduced ones (streamed), and fidelity — how
much of the full-token answer survives each method and budget. Heavy work runs inside `heavy_slot`."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import numpy as np

from reducers import REFERENCE

from ..backend.protocol import Answer, Backend, Encoded
from ..errors import InputError
from ..session import Session
from ..settings import Settings
from . import pipeline, screen, view

if TYPE_CHECKING:
    from . import Explorer

FIDELITY_BUDGETS = (32, 64, 128, 192)


@contextlib.contextmanager
def heavy_slot(x: Explorer, busy: str):
    """One of the server's heavy slots (exports, fidelity runs) for the block, or InputError `busy` after 60 s."""
    semaphore = x.heavy  # read at entry: a test may widen it
    if not semaphore.acquire(timeout=60):
        raise InputError(busy)
    try:
        yield
    finally:
        semaphore.release()


def check_max_new_tokens(x: Explorer, value) -> int:
    limit = x.config.max_new_tokens_limit
    if value is None:
        return x.config.max_new_tokens
    try:
        n = int(value)
        ok = n == float(value) and 1 <= n <= limit
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise InputError(f"max_new_tokens must be a whole number from 1 to {limit}, got {value!r}.")
    return n


def answer_stream(x: Explorer, image, prompt, settings: Settings, session: Session, model=None,
                  max_new_tokens=None, progress=None):
    """Greedy answers from all tokens and from the reduced ones, one token at a time: yields ("full" |
    "reduced", the text so far) after every new token, then ("done", (full Answer, reduced Answer, info,
    session)). Closing the generator (a client that went away) stops the decoding at the next token."""
    max_new_tokens = check_max_new_tokens(x, max_new_tokens)
    if not pipeline.clip_prompt(x, prompt):
        raise InputError("Type a question first: the LLM answers the prompt about the image.")
    truncated = len(prompt.strip()) > x.config.max_prompt_chars
    backend, enc, session = pipeline.encoded(x, image, session, model, progress)
    prompt = pipeline.clip_prompt(x, prompt)
    red, _, _ = pipeline.reduce(x, backend, enc, prompt, settings)
    answers = {}
    for part, reduction, (done, desc) in (("full", None, (0.4, "Answering from all visual tokens")),
                                          ("reduced", red, (0.7, f"Answering from {red.n_kept} reduced tokens"))):
        if progress is not None:
            progress(done, desc=desc)
        with contextlib.closing(backend.answer_stream(enc, prompt, reduction, max_new_tokens)) as stream:
            for item in stream:
                if x.stopping.is_set():
                    raise InputError("The server is stopping; please ask again in a minute.")
                if isinstance(item, Answer):
                    answers[part] = item
                else:
                    yield part, item
    full, reduced = answers["full"], answers["reduced"]
    info = {"stamp": screen.stamp(backend, enc, prompt, settings, red), "full": answer_dict(full),
            "reduced": answer_dict(reduced),
            "prompt_truncated_to_chars": x.config.max_prompt_chars if truncated else None}
    yield "done", (full, reduced, info, session)


def answer_dict(ans: Answer) -> dict:
    decode_s = max(0.0, ans.total_s - ans.prefill_s)
    return {
        "text": ans.text,
        "n_visual_tokens": ans.n_visual_tokens,
        "n_prompt_tokens": ans.n_prompt_tokens,
        "n_new_tokens": ans.n_new_tokens,
        "stop": ans.stop,
        "prefill_s": round(ans.prefill_s, 4),
        "decode_s": round(decode_s, 4),
        "tokens_per_s": round(ans.n_new_tokens / decode_s, 2) if decode_s > 0 and ans.n_new_tokens else None,
    }


def fidelity_plan(x: Explorer, enc: Encoded, settings: Settings, budget: int) -> list[tuple[str, str, Settings]]:
    """[(group, what, settings)]: every method at the matched budget M (adaptive ones at their own
    settings), then the current method across budgets (32, 64, 128, 192 and M) or, without a budget,
    across five values of its first slider."""
    plan = [("every method at M", f"M = {budget}" if entry.budgeted else "own settings", other)
            for method, entry, other in pipeline.at_budget(x, settings, budget) if method != REFERENCE]
    entry = settings.entry
    if entry.budgeted:
        for b in sorted({b for b in FIDELITY_BUDGETS + (budget,) if 1 <= b <= enc.tokens.n}):
            plan.append((f"{entry.label} across budgets", f"budget {b}",
                         settings.with_values(**{entry.budget_field: b})))
        return plan
    sliders = view.sweep_fields(entry)
    if sliders:
        c = x.schema.specs[sliders[0]].control
        for v in np.linspace(c.minimum, c.maximum, 5):
            value = int(round(v)) if c.integer else round(float(v), 6)
            plan.append((f"{entry.label} across {sliders[0]}", f"{sliders[0]} = {value:g}",
                         settings.with_values(**{sliders[0]: value})))
    return plan


def fidelity(x: Explorer, session: Session, max_new_tokens: int = 16):
    """How much of the full-token answer survives: yields (rows so far, done, total) after every row; the
    rows are cached per image, prompt, settings and answer length. Each row: the greedy answer from the
    reduced tokens, exact / token-F1 match with the full-token answer, the drop in the full answer's
    teacher-forced mean log-probability, the first-token KL(full ‖ reduced), prefill seconds and FLOPs."""
    max_new_tokens = check_max_new_tokens(x, max_new_tokens)
    backend, enc, settings, red, _ = pipeline.last(x, session)
    prompt = session.prompt
    if not prompt:
        raise InputError("Type a question first: fidelity compares the LLM's answers to it.")
    # every control and point: the rows of the other methods and budgets read their own controls too
    key = (backend.name, enc.key, prompt, settings.method, settings.values, settings.points, max_new_tokens)
    rows = x._fidelity.get(key)
    if rows is not None:
        yield rows, len(rows), len(rows)
        return
    with heavy_slot(x, "The server is busy with other heavy requests; please try again in a minute."):
        for rows, done, total in _fidelity_rows(x, backend, enc, prompt, settings, red.n_kept, max_new_tokens):
            yield rows, done, total
        x._fidelity.put(key, rows)


def _fidelity_rows(x: Explorer, backend: Backend, enc: Encoded, prompt: str, settings: Settings, budget: int,
                   max_new_tokens: int):
    from ..backend import fidelity as fid

    full = backend.answer(enc, prompt, None, max_new_tokens)
    full_score = backend.score(enc, prompt, None, full.token_ids)
    plan = fidelity_plan(x, enc, settings, budget)
    rows = [dict(group="reference", what="all tokens", label="All tokens",
                 **fid.reference_fidelity(backend, enc, prompt, full, full_score))]
    yield rows, 1, len(plan) + 1
    for group, what, other in plan:
        if x.stopping.is_set():
            raise InputError("The server is stopping; please measure again in a minute.")
        try:
            r, _, _ = pipeline.reduce(x, backend, enc, prompt, other)
            row = fid.fidelity(backend, enc, prompt, r, full, full_score, max_new_tokens)
        except InputError as err:  # e.g. FastV's K beyond this LLM: say so in the row
            row = {"n_kept": None, "answer": f"(not run: {err})"}
        rows.append(dict(group=group, what=what, label=other.entry.label, method=other.method, **row))
        yield list(rows), len(rows), len(plan) + 1
