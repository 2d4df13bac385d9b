"""Bad and odd inputs through the launched app (gradio_client), one test per case.

Each case ends in either a clear, person-readable sentence that names the problem (never the generic
"Something went wrong") or a valid result that hands at least one visual token to the LLM, and after each case
the server still answers a good request. Image-file and prompt cases run against the offline default (the real
loader and geometry are the point there); slider cases and broken encoders run against apps on
`explorer.backend.synthetic.SyntheticBackend`, which is fast and has the same interface; prompt cases that need a
CLIP text tower (PAR's prompt query, CLIP's 77-token truncation) run against the tiny seeded LLaVA of
`tests/tiny.py`, whose text side uses the real CLIP BPE tokenizer.

The API takes the controls as keyword arguments named by the schema (`explorer.settings.Schema`, derived from the
registry), so every method and control of the registry is covered here without naming them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import pytest
import torch

from explorer.backend.synthetic import SyntheticBackend
from explorer.config import OFFLINE, ExplorerConfig
from explorer.service import Explorer
from explorer.settings import Schema
from reducers import REDUCERS
from tests import bad_inputs
from tests.conftest import _launch

pytestmark = pytest.mark.slow

TIMEOUT = 90  # seconds a single request may take before the case counts as a hang
SCHEMA = Schema.build()


def methods_for(backend) -> list[str]:
    """The registry's methods this backend can feed (in registry order; all of them where the explorer no longer
    asks, because every backend feeds every method)."""
    explorer = Explorer(ExplorerConfig(), loader=lambda config, progress=None: backend)
    try:
        available = getattr(explorer, "available", None)
        return available(backend) if available is not None else list(explorer.schema.methods)
    finally:
        explorer.close()


SYNTHETIC_METHODS = methods_for(SyntheticBackend())  # every method but those reading an LLM's attention
ZERO_TOKEN_METHODS = {"none"}  # methods that hand the LLM no visual token by design (one may be registered later)
HEAD = dict(prompt="What is in the picture?", method="par", model=OFFLINE, query_points=[])


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------
def explore_kwargs(image, **over) -> dict:
    """The /explore keyword arguments: the image (a handle_file payload, or None), the head inputs and any
    schema control by name (the others keep the API's defaults)."""
    unknown = set(over) - set(HEAD) - set(SCHEMA.names)
    assert not unknown, unknown
    return dict(image=image, **{**HEAD, **over})


def call(client, api_name="/explore", timeout=TIMEOUT, **kwargs):
    """client.predict with a time limit: a request that never returns fails the test instead of hanging it."""
    return client.submit(api_name=api_name, **kwargs).result(timeout=timeout)


def explore(client, path, **over):
    from gradio_client import handle_file

    return call(client, **explore_kwargs(handle_file(str(path)) if path is not None else None, **over))


def explore_error(client, path, **over) -> str:
    """The message of the gr.Error the request must end in — or of the upload's refusal: a file that is not an
    image is refused when it is uploaded (explorer.guard), with the sentence the loader says for it."""
    import httpx
    from gradio_client.exceptions import AppError

    with pytest.raises((AppError, httpx.HTTPStatusError)) as info:
        explore(client, path, **over)
    if isinstance(info.value, httpx.HTTPStatusError):
        assert info.value.response.status_code == 415, info.value
        return info.value.response.json()["detail"]
    return str(info.value)


def assert_clear(message: str, *needles: str) -> None:
    """A one-sentence message for a person that names the problem (every needle, case-insensitive)."""
    assert bad_inputs.is_one_sentence(message), f"not one clear sentence: {message!r}"
    low = message.lower()
    for needle in needles:
        assert needle.lower() in low, f"{needle!r} not in {message!r}"


def assert_valid(summary: dict) -> None:
    assert isinstance(summary, dict), summary
    n, m = summary["n_tokens"], summary["n_kept"]
    least = 0 if summary["method"] in ZERO_TOKEN_METHODS else 1
    assert least <= m, summary
    assert least <= summary["n_patches_kept"] <= n, summary
    assert m <= n + summary.get("n_extra", 0), summary


def assert_serves(client, good_path) -> None:
    """The server (and this session) still answers a good request."""
    out = explore(client, good_path, method="prumerge")
    assert_valid(out[-1])


@pytest.fixture()
def client(app):
    """A fresh session on the shared offline-default app (outputs are not downloaded: the summary is enough)."""
    from gradio_client import Client

    return Client(app[1], verbose=False, download_files=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tmp_path_factory.mktemp("bad-inputs")


@pytest.fixture(scope="module")
def good(files):
    return bad_inputs.good_jpeg(files, seed=7)


@contextlib.contextmanager
def served(explorer: Explorer):
    """A launched app on `explorer` (same queue settings as the shared app) and a gradio_client session."""
    from gradio_client import Client

    demo = _launch(explorer)
    try:
        yield Client(demo.local_url, verbose=False, download_files=False)
    finally:
        demo.close()


def synthetic_loader(factory=SyntheticBackend):
    return lambda config, progress=None: factory()


@pytest.fixture(scope="module")
def synthetic_client():
    with served(Explorer(ExplorerConfig(), loader=synthetic_loader(lambda: SyntheticBackend(view_side=336)))) as c:
        yield c


@pytest.fixture(scope="module")
def tiny_client():
    """An app on the tiny seeded LLaVA: a CLIP text tower (real BPE tokenizer, 77-token context) for PAR."""
    from tests.tiny import tiny_backend

    backend = tiny_backend()
    assert backend.has_text_tower
    with served(Explorer(ExplorerConfig(), loader=lambda config, progress=None: backend)) as c:
        yield c


# ----------------------------------------------------------------------------------------------------------
# Uploaded files (offline default)
# ----------------------------------------------------------------------------------------------------------
FILE_ERRORS = {  # maker → words the message must contain
    "not_an_image": ("image",),
    "empty_file": ("empty",),
    "truncated_jpeg": ("truncated",),
}


@pytest.mark.parametrize("name", list(FILE_ERRORS))
def test_unusable_file_gets_a_clear_message(client, files, good, name):
    message = explore_error(client, getattr(bad_inputs, name)(files))
    assert_clear(message, *FILE_ERRORS[name])
    assert_serves(client, good)


def test_huge_image_is_refused_with_the_limit_or_downscaled(client, files, good):
    from gradio_client.exceptions import AppError

    try:
        out = explore(client, bad_inputs.huge_image(files))
    except AppError as err:
        assert_clear(str(err), "megapixels", "limit")
        assert "40" in str(err)  # the limit is stated as a number
    else:
        assert_valid(out[-1])
    assert_serves(client, good)


@pytest.mark.parametrize("name", ["cmyk_jpeg", "png16", "rgba_png", "palette_png", "animated_gif", "one_pixel"])
def test_odd_image_works(client, files, good, name):
    maker = getattr(bad_inputs, name)
    summary = explore(client, maker(files), method="prumerge")[-1]
    assert_valid(summary)
    # the size the user sees: upright (EXIF applied, so width and height swap for orientation 6), first frame
    assert summary["image"]["size"] == list(bad_inputs.ODD_BUT_FINE[maker])
    assert_serves(client, good)


def test_exif_rotated_reports_the_upright_size(client, files):
    from PIL import Image

    path = bad_inputs.exif_rotated(files)
    with Image.open(path) as im:
        stored = im.size
    summary = explore(client, path, method="par")[-1]
    assert_valid(summary)
    assert summary["image"]["size"] == [stored[1], stored[0]] == [200, 300]


def test_extreme_aspect_ratio_works(client, files, good):
    from PIL import Image

    path = files / "strip.png"
    Image.new("RGB", (6000, 2), (10, 200, 30)).save(path)
    summary = explore(client, path, method="prumerge+")[-1]
    assert_valid(summary)
    assert summary["image"]["size"] == [6000, 2]
    assert_serves(client, good)


def test_crop_picture_dims_exactly_what_the_model_does_not_see():
    """The crop picture is drawn on a thumbnail while the crop box is in the user's pixels: a 600×400 image
    cropped to x ∈ [100, 500) shows, at 320 px wide, its columns below 53 and from 267 on dimmed (the 6000×2
    strip above crashed here, and every image over 320 px had the wrong part dimmed)."""
    from PIL import Image

    from explorer.backend.geometry import thumbnail
    from explorer.pictures.draw import crop_picture

    im = Image.new("RGB", (600, 400), (200, 200, 200))
    arr = crop_picture(thumbnail(im), (100, 0, 500, 400), image_size=im.size)
    red = arr[arr.shape[0] // 2, :, 0].astype(int)
    assert arr.shape[1] == 320
    assert (red[:53] == 60).all() and (red[267:] == 60).all()  # dimmed to 30 %
    assert (red[57:263] == 200).all()  # seen (the outline is 3 px wide inside the box)


def test_no_image_asks_for_one(client, good):
    """/explore answers an emptied image quietly (the UI clears its pictures, no error toast) with a readout that
    asks for one; /answer, which cannot do anything without one, says so as an error."""
    from gradio_client.exceptions import AppError

    out = explore(client, None)
    assert out[-1] is None and "upload an image" in out[10].lower()
    with pytest.raises(AppError) as info:
        call(client, api_name="/answer", max_new_tokens=4, **explore_kwargs(None, method="prumerge"))
    assert_clear(str(info.value), "upload an image")
    assert_serves(client, good)


# ----------------------------------------------------------------------------------------------------------
# Prompts: the offline default (no text tower: PAR's query is the CLS token or pointed patches) and the tiny
# LLaVA (a CLIP text tower with the real BPE tokenizer: PAR reads the prompt)
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", ["", "   \n\t "], ids=["empty", "whitespace"])
def test_empty_prompt_with_par_says_par_needs_one_where_par_reads_prompts(synthetic_client, good, prompt):
    """Only a backend with a text tower reads PAR's query from the prompt (the synthetic one has one)."""
    assert_clear(explore_error(synthetic_client, good, prompt=prompt, method="par"), "PAR needs a prompt")
    assert_serves(synthetic_client, good)


@pytest.mark.parametrize("prompt", ["", "   \n\t "], ids=["empty", "whitespace"])
def test_empty_prompt_with_par_on_the_offline_default_queries_the_cls_token(client, good, prompt):
    """The offline default has no text tower: PAR's query is the CLS token, so no prompt is needed."""
    summary = explore(client, good, prompt=prompt, method="par")[-1]
    assert_valid(summary)
    assert summary["query"]["kind"] == "cls" and summary["prompt"] == ""
    assert_serves(client, good)


@pytest.mark.parametrize("method", ["prumerge", "prumerge+"])
def test_empty_prompt_with_prumerge_works(client, good, method):
    summary = explore(client, good, prompt="", method=method)[-1]
    assert_valid(summary)
    assert "query" not in summary


LONG = ("What colour is the small object near the left edge of the picture? " * 200)[:10_000]


def test_ten_thousand_character_prompt_is_truncated_and_says_so(tiny_client, good):
    """Through a CLIP text tower: the query says the prompt was truncated, and so does the readout."""
    assert len(LONG) == 10_000
    out = explore(tiny_client, good, prompt=LONG, method="par")
    summary, readout = out[-1], out[-3]
    assert_valid(summary)
    assert summary["query"]["kind"] == "prompt" and summary["query"]["truncated"] is True
    assert "truncated" in readout.lower()
    assert_serves(tiny_client, good)


def test_ten_thousand_character_prompt_on_the_offline_default_is_cut(client, good):
    """No text tower: the prompt only counts as LLM text tokens, cut to max_prompt_chars (2000) first."""
    summary = explore(client, good, prompt=LONG, method="par")[-1]
    assert_valid(summary)
    assert summary["query"]["kind"] == "cls" and len(summary["prompt"]) == 2000
    assert_serves(client, good)


NON_LATIN = [
    "图片里有什么？",
    "Что изображено на картинке?",
    "ماذا يوجد في هذه الصورة؟",
    "🚀🌍 what is this? ✨",
    "what\x00 is\x1b[31m this\u200b\u202e?",
]
NON_LATIN_IDS = ["chinese", "russian", "arabic", "emoji", "control-characters"]


@pytest.mark.parametrize("prompt", NON_LATIN, ids=NON_LATIN_IDS)
def test_non_latin_prompt_works(client, tiny_client, good, prompt):
    summary = explore(client, good, prompt=prompt, method="par")[-1]  # offline default: LLM text tokens only
    assert_valid(summary)
    summary = explore(tiny_client, good, prompt=prompt, method="par")[-1]  # through the CLIP BPE tokenizer
    assert_valid(summary)
    assert summary["query"]["kind"] == "prompt" and summary["query"]["truncated"] is False
    assert_serves(client, good)


@pytest.mark.parametrize("prompt", [123, 4.5, True, ["a", "list"], {"text": "a dict"}],
                         ids=["int", "float", "bool", "list", "dict"])
def test_non_string_prompt_gets_a_clear_message(synthetic_client, good, prompt):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    assert_clear(explore_error(synthetic_client, good, prompt=prompt, method="prumerge"), "prompt", "text")
    with pytest.raises(AppError) as info:
        call(synthetic_client, api_name="/answer", max_new_tokens=4,
             **explore_kwargs(handle_file(str(good)), prompt=prompt, method="prumerge"))
    assert_clear(str(info.value), "prompt", "text")
    assert_serves(synthetic_client, good)


def test_answer_with_empty_prompt_asks_for_a_question(client, good):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    kwargs = explore_kwargs(handle_file(str(good)), prompt="", method="prumerge")
    with pytest.raises(AppError) as info:
        call(client, api_name="/answer", max_new_tokens=8, **kwargs)
    assert_clear(str(info.value), "question")


def test_answer_with_ten_thousand_character_prompt_says_it_was_cut(client, good):
    from gradio_client import handle_file

    prompt = ("Describe the picture. " * 500)[:10_000]
    kwargs = explore_kwargs(handle_file(str(good)), prompt=prompt, method="prumerge")
    full, reduced, stats, _note, info = call(client, api_name="/answer", timeout=180, max_new_tokens=8, **kwargs)
    assert isinstance(full, str) and isinstance(reduced, str)
    assert info["prompt_truncated_to_chars"] == 2000
    assert "cut" in stats


# ----------------------------------------------------------------------------------------------------------
# Every control at the ends of its range, every method (synthetic encoder: the reducers and drawing are the
# point). The ranges come from the schema, so a new control is covered without naming it here.
# ----------------------------------------------------------------------------------------------------------
RANGED = {name: spec.control for name, spec in SCHEMA.specs.items() if spec.control.kind in ("slider", "number")}


def _end(control, value):
    return int(value) if control.integer else float(value)


EXTREMES = [(name, _end(c, v)) for name, c in RANGED.items() for v in (c.minimum, c.maximum)]
ALL_LOW = {name: _end(c, c.minimum) for name, c in RANGED.items()}
ALL_HIGH = {name: _end(c, c.maximum) for name, c in RANGED.items()}
SLIDER_CASES = ([pytest.param(m, {k: v}, id=f"{m}-{k}={v}") for m in SYNTHETIC_METHODS for k, v in EXTREMES]
                + [pytest.param(m, ALL_LOW, id=f"{m}-all-low") for m in SYNTHETIC_METHODS]
                + [pytest.param(m, ALL_HIGH, id=f"{m}-all-high") for m in SYNTHETIC_METHODS]
                + [pytest.param(m, {"merge": False, "neighbours": 256, "iqr_multiplier": 0.0}, id=f"{m}-no-merge")
                   for m in ("prumerge", "prumerge+") if m in REDUCERS]
                + [pytest.param("par", {"spatial": True, "cluster_threshold": 0.0}, id="par-spatial-gamma=0"),
                   pytest.param("par", {"rewrite": False, "retrieval_ratio": 0.01, "tau": 1.0}, id="par-no-rewrite"),
                   pytest.param("top-attention", {"attention": "head-mean", "budget": 100_000}, id="top-head-mean")])
EXACT_BUDGET = [m for m in ("random", "uniform", "top-attention") if m in REDUCERS]  # keep exactly min(M, N)


@pytest.mark.parametrize("method,over", SLIDER_CASES)
def test_slider_extreme(synthetic_client, good, method, over):
    from gradio_client.exceptions import AppError

    try:
        summary = explore(synthetic_client, good, method=method, **over)[-1]
    except AppError as err:  # allowed, if it says what is wrong
        assert_clear(str(err))
        assert any(name in str(err) for name in over), f"the message does not name the setting: {err}"
        assert_serves(synthetic_client, good)
        return
    assert_valid(summary)  # a full answer: the server is serving (a follow-up request is made after errors)
    n = summary["n_tokens"]
    if method in EXACT_BUDGET:
        assert summary["n_kept"] == min(int(over.get("budget", SCHEMA.specs["budget"].default)), n)
    if method == "all":
        assert summary["n_kept"] == n


# ----------------------------------------------------------------------------------------------------------
# Out-of-range and malformed values: one sentence naming the control, worded by explorer/settings.py
# ----------------------------------------------------------------------------------------------------------
OUT_OF_RANGE = [
    pytest.param({"tau": 2.0}, ("tau must be between 0 and 1, got 2.0.",), id="tau=2"),
    pytest.param({"tau": -0.5}, ("tau", "between 0 and 1"), id="tau=-0.5"),
    pytest.param({"delta": 1.5}, ("delta", "between 0 and 1"), id="delta=1.5"),
    pytest.param({"retrieval_ratio": 0.0}, ("retrieval_ratio", "between 0.01 and 1"), id="rho=0"),
    pytest.param({"cluster_threshold": -1.0}, ("cluster_threshold", "between"), id="gamma=-1"),
    pytest.param({"method": "prumerge", "iqr_multiplier": -1.0}, ("iqr_multiplier", "between"), id="k=-1"),
    pytest.param({"method": "prumerge", "neighbours": 0}, ("neighbours", "between 1 and 256"), id="neighbours=0"),
    pytest.param({"method": "prumerge", "neighbours": 100_000}, ("neighbours", "between"), id="neighbours=1e5"),
    pytest.param({"method": "random", "budget": 0}, ("budget", "between"), id="budget=0"),
    pytest.param({"method": "random", "seed": 2**63}, ("seed", "between 0 and 4294967295"), id="seed=2^63"),
    pytest.param({"method": "random", "seed": -1}, ("seed", "between"), id="seed=-1"),
    pytest.param({"method": "prumerge", "neighbours": 2.5}, ("neighbours", "whole number"), id="neighbours=2.5"),
    pytest.param({"method": "nope"}, ("nope", "method"), id="method=nope"),
    pytest.param({"attention": "nope"}, ("nope", "attention"), id="attention=nope"),
    pytest.param({"tau": "abc"}, ("tau", "number"), id="tau=abc"),
    pytest.param({"tau": "nan"}, ("tau", "finite"), id="tau=nan"),
    pytest.param({"merge": "maybe", "method": "prumerge"}, ("merge", "true or false"), id="merge=maybe"),
    pytest.param({"model": "no-such-model"}, ("no-such-model", "model"), id="model=unknown"),
    pytest.param({"query_points": [["x", 1]]}, ("query_points",), id="points=bad"),
] + [  # every ranged control of the schema, just below and just above its range
    pytest.param({"method": spec.owners[0] if spec.owners[0] in REDUCERS else "par", name: value},
                 (name, "between"), id=f"{name}={value}")
    for name, spec in SCHEMA.specs.items() if spec.control.kind in ("slider", "number")
    for value in (_end(spec.control, spec.control.minimum - 1), _end(spec.control, spec.control.maximum + 1))
]


@pytest.mark.parametrize("over,needles", OUT_OF_RANGE)
def test_out_of_range_value_gets_a_clear_message(synthetic_client, good, over, needles):
    assert_clear(explore_error(synthetic_client, good, **over), *needles)
    assert_serves(synthetic_client, good)


# ----------------------------------------------------------------------------------------------------------
# Odd encoder outputs: constant attention (IQR = 0), no outliers, NaN / Inf from a broken checkpoint
# ----------------------------------------------------------------------------------------------------------
class EditedBackend(SyntheticBackend):
    """A SyntheticBackend whose encodes are edited by `edit(tokens_fields, n) -> changes` before they are cached.

    Building the new VisualTokens is where a broken checkpoint's NaN features are caught (ValueError)."""

    def __init__(self, edit, **kwargs):
        super().__init__(**kwargs)
        self._edit = edit

    def _encode(self, image, key):
        from reducers import VisualTokens

        enc = super()._encode(image, key)
        t = enc.tokens
        fields = {f.name: getattr(t, f.name) for f in dataclasses.fields(t) if f.init}  # every field it carries
        fields.update(self._edit(fields, t.n))
        head_mean = fields.pop("attn_head_mean", enc.attn_head_mean)
        return dataclasses.replace(enc, tokens=VisualTokens(**fields), attn_head_mean=head_mean)


def constant_attention(fields, n):
    return {"cls_attn": torch.full((n,), 1.0 / n), "attn_head_mean": torch.full((n,), 1.0 / n)}


def spread_attention(fields, n):  # evenly spread: Q3 + 1.5·IQR lies above the maximum, so nothing is an outlier
    a = torch.linspace(1.0, 2.0, n)
    return {"cls_attn": a / a.sum(), "attn_head_mean": a.flip(0) / a.sum()}


def poisoned(name, value):
    def edit(fields, n):
        x = fields[name].clone()
        x[n // 2] = value
        return {name: x}

    return edit


@pytest.fixture(scope="module")
def constant_client():
    with served(Explorer(ExplorerConfig(), loader=synthetic_loader(lambda: EditedBackend(constant_attention)))) as c:
        yield c


@pytest.fixture(scope="module")
def spread_client():
    with served(Explorer(ExplorerConfig(), loader=synthetic_loader(lambda: EditedBackend(spread_attention)))) as c:
        yield c


@pytest.mark.parametrize("attention", ["official", "head-mean"])
@pytest.mark.parametrize("method", SYNTHETIC_METHODS)
def test_constant_attention_works(constant_client, good, method, attention):
    summary = explore(constant_client, good, method=method, attention=attention)[-1]
    assert_valid(summary)
    if method in ("prumerge", "prumerge+"):
        assert summary["q1"] == summary["q3"]  # IQR = 0
        assert summary["stages"]["outliers"] >= 1


@pytest.mark.parametrize("k", [0.0, 1.5, 5.0])
@pytest.mark.parametrize("method", ["prumerge", "prumerge+", "top-attention"])
def test_no_outliers_keeps_at_least_one_token(spread_client, good, method, k):
    summary = explore(spread_client, good, method=method, iqr_multiplier=k)[-1]
    assert_valid(summary)
    if method != "top-attention" and k >= 1.5:
        assert summary["stages"]["outliers"] == 1  # nothing above the fence: the most attended patch is kept


BROKEN = "broken-checkpoint"
POISONS = {
    "nan-features": poisoned("features", math.nan),
    "inf-features": poisoned("features", math.inf),
    "nan-attention": poisoned("cls_attn", math.nan),
    "nan-joint": poisoned("joint", math.nan),
}


@pytest.mark.parametrize("poison", list(POISONS))
def test_nan_from_a_broken_checkpoint_gets_a_clear_message(good, poison):
    """model "broken-checkpoint" encodes NaN/Inf; "offline" is a healthy SyntheticBackend in the same server."""

    def loader(config, progress=None):
        return SyntheticBackend() if config.model == OFFLINE else EditedBackend(POISONS[poison])

    with served(Explorer(ExplorerConfig(model=BROKEN), loader=loader)) as client:
        for method in ("par", "prumerge"):
            message = explore_error(client, good, method=method, model=BROKEN)
            assert_clear(message)
            low = message.lower()
            assert "nan" in low or "inf" in low or "broken" in low or "unusable" in low, message
        assert_serves(client, good)  # the offline default in the same server still works


# ----------------------------------------------------------------------------------------------------------
# A model that fails to load
# ----------------------------------------------------------------------------------------------------------
MISSING = "/nonexistent/folder"


@pytest.fixture(scope="module")
def failing_model_client():
    """Default model is a folder that does not exist, loaded by the real `load_backend`; "offline" is synthetic."""
    from explorer.backend.models import load_backend

    def loader(config, progress=None):
        return SyntheticBackend() if config.model == OFFLINE else load_backend(config, progress)

    with served(Explorer(ExplorerConfig(model=MISSING, device="cpu"), loader=loader)) as c:
        yield c


def test_failed_model_names_the_model_and_the_reason(failing_model_client, good):
    message = explore_error(failing_model_client, good, model=MISSING)
    assert_clear(message, MISSING, "failed to load")
    assert "(" in message and ")" in message  # the reason, e.g. "(OSError: …)"
    # the offline default keeps working afterwards
    assert_valid(explore(failing_model_client, good, model=OFFLINE, method="par")[-1])
    # and asking for the broken model again answers at once with the same sentence
    assert explore_error(failing_model_client, good, model=MISSING) == message
    assert_valid(explore(failing_model_client, good, model=OFFLINE, method="prumerge")[-1])


def test_failed_model_reason_says_the_folder_does_not_exist(failing_model_client, good):
    """A path that is not there should be reported as such, not as a malformed hub repo id."""
    message = explore_error(failing_model_client, good, model=MISSING).lower()
    assert any(s in message for s in ("does not exist", "not found", "no such", "doesn't exist", "missing")), message


def test_default_model_failure_is_reported_on_every_endpoint(failing_model_client, good):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    message = explore_error(failing_model_client, good, model=None)  # the UI's default (config.model)
    assert_clear(message, MISSING)
    kwargs = explore_kwargs(handle_file(str(good)), model=MISSING)
    with pytest.raises(AppError) as info:
        call(failing_model_client, api_name="/answer", max_new_tokens=8, **kwargs)
    assert_clear(str(info.value), MISSING, "failed to load")


# ----------------------------------------------------------------------------------------------------------
# Resource guard below the app: the region of a huge, very wide image in "pad" mode
# ----------------------------------------------------------------------------------------------------------
def test_pad_geometry_does_not_allocate_a_square_of_the_long_side(monkeypatch):
    """LLaVA checkpoints whose image processor pads (do_pad) go through Geometry "pad": a 20000×500 upload
    (10 MP, under the 40 MP limit) must not build a 20000×20000 (400 MP, 1.2 GB) canvas before resizing."""
    from PIL import Image

    from explorer.backend import geometry as encode

    image = Image.new("RGB", (20_000, 500), (90, 120, 200))
    allowed = 4 * image.size[0] * image.size[1]
    real_new = Image.new
    sizes = []

    def guarded_new(mode, size, *args, **kwargs):
        sizes.append(tuple(size))
        if size[0] * size[1] > allowed:
            raise MemoryError(f"Image.new{tuple(size)}: {size[0] * size[1] / 1e6:.0f} MP for a "
                              f"{image.size[0] * image.size[1] / 1e6:.0f} MP upload")
        return real_new(mode, size, *args, **kwargs)

    monkeypatch.setattr(Image, "new", guarded_new)
    geometry = encode.Geometry((336, 336), mode="pad")
    pixels, box = geometry.pixel_values(image)
    assert tuple(pixels.shape) == (1, 3, 336, 336)
