"""What every tab shares: the page's CSS and scripts, the examples, the upload check, the one decorator that
turns any exception into the one-sentence `gr.Error`, the controls built from the schema, and the launcher."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
from pathlib import Path

import gradio as gr

from ..errors import InputError

log = logging.getLogger("explorer")
ASSETS = Path(__file__).resolve().parent.parent.parent / "assets"
DEFAULT_PROMPT = "What is in the picture?"
INSPECT, POINT = "inspect the patch", "point PAR's query at it"
FOLLOWING_TABS = ("compare-tab", "pin-tab", "explain-tab")  # tabs showing what the second event draws

CSS = """
#main-row { align-items: flex-start; }
@media (min-width: 1100px) {
  #controls { position: sticky; top: 6px; max-height: calc(100vh - 12px); overflow-y: auto; flex-wrap: nowrap; }
  #controls > * { flex-shrink: 0; }
  #pictures { position: sticky; top: 6px; }
}
#answers.stale textarea, .stale-answer textarea { opacity: 0.45; }
#stale-note p { color: #b45309; font-weight: 600; }
#readout p { margin: 0.1em 0; }
#header h1 { margin: 0 0 0.2em 0; font-size: 1.5em; }
#header p { margin: 0.1em 0; }
#header details { font-size: 0.95em; }
.caption p { font-size: 0.85em; color: #4b5563; margin: 0.15em 0 0.4em 0; line-height: 1.25; }
#examples .thumbnail-item { min-width: 0; }
"""

# the address says what `Settings.describe()` says: the method and the controls that matter to it
URL_JS = """(method, ...rest) => {
  const names = %s;
  const relevant = new Set((%s)[method] || names);
  const params = new URLSearchParams();
  params.set('method', method);
  names.forEach((n, i) => {
    if (relevant.has(n) && rest[i] !== null && rest[i] !== undefined) params.set(n, String(rest[i]));
  });
  const url = window.location.pathname + '?' + params.toString();
  window.history.replaceState(null, '', url);
  return [];
}"""
COPY_LINK_JS = "() => { navigator.clipboard && navigator.clipboard.writeText(window.location.href); return []; }"
SCROLL_JS = """() => { if (window.innerWidth < 1100) { const el = document.getElementById('pictures');
  if (el) el.scrollIntoView({behavior: 'smooth', block: 'start'}); } return []; }"""


def load_examples() -> list[dict]:
    """Examples from assets/examples.json (images credited in assets/CREDITS.md), with absolute paths."""
    index = ASSETS / "examples.json"
    if not index.is_file():
        return []
    rows = []
    for row in json.loads(index.read_text()):
        path = ASSETS / row["file"]
        if path.is_file():
            rows.append({**row, "path": str(path), "prompt": row.get("prompt") or DEFAULT_PROMPT})
    return rows


GENERIC_FILE = "This file cannot be used; please upload the image again (or click an example)."


def upload_path(image) -> str:
    """The path of an image file Gradio itself uploaded (inside its upload / cache folder), or one generic
    sentence: a request naming any other path — as a path, a `url` or with another `meta` — is refused the same
    way whether that path exists or not, so the API cannot read or probe the server's files."""
    from gradio.utils import get_upload_folder

    if image is None or image == "":
        raise InputError("Please upload an image (or click one of the examples).")
    path = image.get("path") if isinstance(image, dict) else image
    if not isinstance(path, str) or not path or "\x00" in path:  # a `url` only, or not a file payload at all
        raise InputError(GENERIC_FILE)
    root = Path(get_upload_folder()).resolve()
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError):
        raise InputError(GENERIC_FILE) from None
    if not resolved.is_relative_to(root) or resolved == root:
        raise InputError(GENERIC_FILE)
    return str(resolved)


def error(err: Exception) -> gr.Error:
    """A user's mistake → its own one-sentence message (logged in one line); anything else is logged with its
    traceback and the user gets a generic sentence (internal details stay in the server log)."""
    if isinstance(err, InputError):
        log.info("rejected request: %s", err)
        return gr.Error(str(err), print_exception=False)  # one log line, no traceback from Gradio's queue
    log.error("unexpected error while serving a request", exc_info=err)
    return gr.Error(f"Something went wrong ({type(err).__name__}); the server is still running — please try again.",
                    print_exception=False)  # the traceback is logged once, above


def one_sentence(handler):
    """The handler with every exception turned into `error(err)` (a generator stays a generator, so Gradio
    still streams it; the signature, name and docstring — the API's description — are kept)."""
    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def streaming(*args, **kwargs):
            try:
                yield from handler(*args, **kwargs)
            except Exception as err:
                raise error(err) from None

        return streaming

    @functools.wraps(handler)
    def plain(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except Exception as err:
            raise error(err) from None

    return plain


def control_component(spec, visible: bool, budget_max: int | None, method: str):
    """The Gradio component of one schema control (its explanation: the one `method` gives; a budget slider
    runs up to `budget_max` when given)."""
    c = spec.control
    common = dict(label=c.label, info=spec.info_for(method), visible=visible, elem_id=f"ctl-{spec.name}")
    if c.kind == "slider":
        maximum = min(c.maximum, budget_max) if c.budget and budget_max else c.maximum
        return gr.Slider(c.minimum, maximum, value=min(spec.default, maximum), step=c.step, **common)
    if c.kind == "number":
        return gr.Number(spec.default, precision=0, minimum=c.minimum, maximum=c.maximum, **common)
    if c.kind == "toggle":
        return gr.Checkbox(spec.default, **common)
    return gr.Radio(list(c.options), value=spec.default, **common)


def serve(demo: gr.Blocks, config, **overrides) -> gr.Blocks:
    """Queue and launch `demo` as `python app.py` does (`launch_kwargs`: limits, page style) behind its guard
    (`explorer.guard`: the door, the queue caps, headers, the app's own cache cleaning, safe log lines);
    `overrides` for tests and benchmarks (e.g. `prevent_thread_lock=True, server_name="127.0.0.1",
    server_port=None`). Direct /gradio_api/run calls are closed everywhere (gradio_client joins the queue)."""
    from gradio.utils import _parse_file_size

    from ..guard import Guard, Limits, safe_logging

    safe_logging()
    kwargs = {**launch_kwargs(config), **overrides}
    demo.queue(max_size=config.queue_size, default_concurrency_limit=2, api_open=False)
    guard = Guard(demo, Limits.from_config(config, _parse_file_size(kwargs["max_file_size"])))
    demo.delete_cache = None  # the guard's cleaner runs the schedule (Gradio's stops on its first bad entry)
    demo.guard = guard
    demo.launch(**{**kwargs, **guard.launch_kwargs()})
    return demo


def launch_kwargs(config) -> dict:
    """Loopback unless GRADIO_SERVER_NAME says otherwise; never share by default."""
    return dict(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        max_file_size="50mb",
        show_error=False,
        share=False,
        css=CSS,
    )
