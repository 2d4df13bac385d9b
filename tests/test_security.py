"""What a network neighbour or a crafted request can reach, and what loading a model can execute.

* The server binds to the loopback interface unless GRADIO_SERVER_NAME says otherwise, and never shares.
* Files outside Gradio's cache are not served, and a request cannot make the app read a file that was not
  uploaded: /explore, /compare, /answer and /export, sent any path as `path`, as `url`, with a wrong
  `meta._type`, as a bare string, through `..` or through a symlink inside the upload folder, never return that
  file's pixels, and the answer is the same whether the path exists, is empty, or is not an image (no oracle).
* Unexpected errors do not leak internals to the client.
* No model-loading code unpickles: no `torch.load` without `weights_only=True`, no pickle, no
  `use_safetensors=False`, no `trust_remote_code=True`; the offline checkpoint on disk is safetensors only.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
from pathlib import Path

import httpx
import pytest

from explorer.backend.synthetic import SyntheticBackend
from explorer.config import OFFLINE, ExplorerConfig
from explorer.service import Explorer
from explorer.settings import Schema
from tests import bad_inputs
from tests.conftest import _launch

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = Schema.build()
CONTROLS = dict(prompt="What is in the picture?", method="prumerge", model=OFFLINE, query_points=[])
# the positional inputs of each endpoint after the image, as /gradio_api/call/<name> takes them (the view_api order)
TAILS = {
    "explore": [],
    "compare": [None, False],  # sweep_parameter, match_equivalent
    "answer": [4],  # max_new_tokens
}


@contextlib.contextmanager
def served(explorer: Explorer):
    demo = _launch(explorer)
    try:
        yield demo.local_url.rstrip("/")
    finally:
        demo.close()


@pytest.fixture(scope="module")
def url():
    with served(Explorer(ExplorerConfig(), loader=lambda config, progress=None: SyntheticBackend(view_side=168))) as u:
        yield u


def raw_data(api: str, image) -> list:
    """The positional `data` of a raw call: image, prompt, method, model, query_points, the endpoint's own
    inputs, then every schema control at its default."""
    if api == "export":
        return [image]  # /export takes no inputs: the payload is extra, and must be ignored
    head = [image, CONTROLS["prompt"], CONTROLS["method"], CONTROLS["model"], CONTROLS["query_points"]]
    return head + TAILS[api] + [spec.default for spec in SCHEMA.specs.values()]


DOOR = "refused at the door"  # explorer.guard refused the request before it was queued (HTTP 400, one sentence)


def raw_call(url: str, api: str, data: list) -> tuple[str, object]:
    """POST /gradio_api/call/<api> with a hand-made payload (no upload); ("complete"|"error", data), or
    (DOOR, {"error": sentence}) when the guard refused it before it was queued."""
    r = httpx.post(f"{url}/gradio_api/call/{api}", json={"data": data}, timeout=30)
    if r.status_code == 400 and isinstance(r.json(), dict) and isinstance(r.json().get("detail"), str):
        return DOOR, {"error": r.json()["detail"]}
    if r.status_code != 200:
        return f"http {r.status_code}", r.text[:200]
    event_id = r.json()["event_id"]
    event, out = None, None
    with httpx.stream("GET", f"{url}/gradio_api/call/{api}/{event_id}", timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                out = json.loads(line.split(":", 1)[1])
                break
    return event, out


def raw_explore(url: str, image) -> tuple[str, object]:
    return raw_call(url, "explore", raw_data("explore", image))


# ----------------------------------------------------------------------------------------------------------
# Binding
# ----------------------------------------------------------------------------------------------------------
def test_launch_binds_loopback_by_default(monkeypatch):
    from explorer.ui import launch_kwargs

    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    kwargs = launch_kwargs(ExplorerConfig())
    assert kwargs["server_name"] == "127.0.0.1"
    assert kwargs.get("share") is False
    assert not kwargs.get("allowed_paths")
    assert kwargs.get("show_error") is False  # tracebacks stay in the server log


def test_launch_respects_gradio_server_name(monkeypatch):
    from explorer.ui import launch_kwargs

    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    kwargs = launch_kwargs(ExplorerConfig())
    assert kwargs["server_name"] == "0.0.0.0"
    assert kwargs.get("share") is False


def test_app_main_launches_with_these_kwargs(monkeypatch):
    """app.py passes launch_kwargs through: loopback, no share link, no extra allowed paths."""
    import gradio as gr

    import app

    seen = {}
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.setattr(Explorer, "preload", lambda self: None)  # no model load in this test
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: seen.update(kwargs))
    app.main(["--model", OFFLINE])
    assert seen["server_name"] == "127.0.0.1"
    assert seen.get("share") is False
    assert not seen.get("allowed_paths")


# ----------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [
    "/etc/passwd",
    str(ROOT / "app.py"),
    "app.py",
    "../../../../../../etc/passwd",
    "%2Fetc%2Fpasswd",
    str(ROOT / "assets" / "astronaut.jpg"),
    str(ROOT / "explorer" / "backend" / "models.py"),
    str(ROOT / "explorer" / "config.py"),
])
def test_files_outside_the_cache_are_not_served(url, target):
    r = httpx.get(f"{url}/gradio_api/file={target}", timeout=30)
    assert r.status_code in (403, 404), (r.status_code, r.content[:80])
    assert b"root:" not in r.content and b"def main" not in r.content and b"import" not in r.content


def test_the_file_route_serves_outputs(url, tmp_path):
    """The refusals above are real: the same route does serve the app's own outputs."""
    from gradio_client import Client, handle_file

    from tests.bad_inputs import good_jpeg

    client = Client(url, verbose=False, download_files=False)
    out = client.submit(image=handle_file(str(good_jpeg(tmp_path))), **CONTROLS, api_name="/explore").result(timeout=60)
    kept = out[0].get("value", out[0]) if isinstance(out[0], dict) else {"path": out[0]}  # an update or FileData
    link = kept.get("url") or f"{url}/gradio_api/file={kept['path']}"
    r = httpx.get(link, timeout=30)
    assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"  # a JPEG overlay


@pytest.mark.parametrize("path", ["/etc/passwd", str(ROOT / "assets" / "astronaut.jpg"), str(ROOT / "app.py")])
def test_a_request_cannot_make_the_app_read_a_file_it_was_not_sent(url, path):
    """/explore takes the image payload unprocessed (preprocess=False); a path that was never uploaded must be
    refused before the explorer opens it (otherwise any image on the server could be rendered back)."""
    event, data = raw_explore(url, {"path": path, "meta": {"_type": "gradio.FileData"}})
    assert event in ("error", DOOR), (event, str(data)[:200])
    assert "root:" not in json.dumps(data)


@pytest.mark.parametrize("image", [
    {"url": "file:///etc/passwd", "meta": {"_type": "gradio.FileData"}},
    {"path": None, "url": "http://169.254.169.254/latest/meta-data/", "meta": {"_type": "gradio.FileData"}},
])
def test_urls_in_the_payload_are_not_fetched(url, image):
    event, data = raw_explore(url, image)
    assert event in ("error", DOOR), (event, str(data)[:200])


# --- no path oracle: every endpoint, every payload shape, four states of the named file -----------------------
ENDPOINTS = ["explore", "compare", "answer", "export"]
SHAPES = {  # how a crafted request may name a server path
    "filedata": lambda p: {"path": p, "meta": {"_type": "gradio.FileData"}},
    "path-only": lambda p: {"path": p},
    "wrong-meta": lambda p: {"path": p, "meta": {"_type": "gradio.ImageData"}},
    "url-only": lambda p: {"url": p},
    "url-filedata": lambda p: {"path": None, "url": p, "meta": {"_type": "gradio.FileData"}},
    "file-url": lambda p: {"url": "file://" + p, "meta": {"_type": "gradio.FileData"}},
    "bare-string": lambda p: p,
}
EXPORT_FIRST = "Nothing to work on: explore an image first (or explore it again if it has been a while)."


@pytest.fixture(scope="module")
def server_files(tmp_path_factory) -> dict[str, str]:
    """`bad_inputs.not_uploaded_files`: an image, an empty file, a text file named .png, a missing path."""
    return bad_inputs.not_uploaded_files(tmp_path_factory.mktemp("not-uploaded"))


def assert_refused(api: str, event: str, data) -> None:
    """An error, and its message (if any) one of the generic sentences: Gradio's own message-less refusal of a
    FileData outside its upload folder (null), the app's GENERIC_FILE — also what the guard answers at the door
    for a typed FileData that is not a file Gradio uploaded — or, for /export, which takes no input at all,
    'explore an image first'."""
    from explorer.ui import GENERIC_FILE

    if event == DOOR:
        assert data == {"error": GENERIC_FILE}, (api, data)
        return
    assert event == "error", (api, event, str(data)[:300])
    message = data.get("error") if isinstance(data, dict) else data
    allowed = {None, GENERIC_FILE} | ({EXPORT_FIRST} if api == "export" else set())
    assert message in allowed, (api, message)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("api", ENDPOINTS)
def test_no_endpoint_reads_a_file_it_was_not_sent_and_none_is_an_oracle(url, server_files, api, shape):
    """The same answer whether the named file is an image, empty, not an image or missing."""
    answers = {}
    for state, path in server_files.items():
        event, data = raw_call(url, api, raw_data(api, SHAPES[shape](path)))
        assert_refused(api, event, data)
        answers[state] = json.dumps(data, sort_keys=True)
    assert len(set(answers.values())) == 1, answers


@pytest.mark.parametrize("via", ["symlink", "dotdot", "dotdot-inside"])
@pytest.mark.parametrize("shape", ["filedata", "path-only", "wrong-meta", "bare-string"])
@pytest.mark.parametrize("api", ["explore", "compare", "answer"])
def test_paths_that_only_look_inside_the_upload_folder_are_resolved(url, server_files, api, shape, via):
    """A symlink placed inside Gradio's upload folder that points outside it, and `..` paths that start in it,
    get the same answer as the missing file: the path is resolved before it is compared."""
    from gradio.utils import get_upload_folder

    root = Path(get_upload_folder())
    root.mkdir(parents=True, exist_ok=True)
    target = server_files["image"]
    if via == "symlink":
        folder = root / f"vte-test-{os.getpid()}-{api}-{shape}"
        folder.mkdir(exist_ok=True)
        link = folder / "upload.png"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
        path = str(link)
    elif via == "dotdot":
        path = os.path.join(str(root), os.path.relpath(target, root))  # /…/gradio/../../…/secret.png
    else:
        path = str(root) + "/x/.." + "/.." * len(root.parts) + target  # /…/gradio/x/../../../…/secret.png
    assert ".." in path or Path(path).is_symlink()
    try:
        event, data = raw_call(url, api, raw_data(api, SHAPES[shape](path)))
        missing = raw_call(url, api, raw_data(api, SHAPES[shape](server_files["missing"])))
    finally:
        if via == "symlink":
            link.unlink()
            link.parent.rmdir()
    assert_refused(api, event, data)
    assert (event, data) == missing


@pytest.mark.parametrize("shape", ["filedata", "path-only", "wrong-meta"])
@pytest.mark.parametrize("api", ["explore", "compare", "answer"])
def test_a_file_gradio_uploaded_is_accepted_in_every_shape(url, server_files, api, shape):
    """The refusals above are real: the same raw calls with a file that went through /gradio_api/upload work."""
    with open(server_files["image"], "rb") as f:
        r = httpx.post(f"{url}/gradio_api/upload", files={"files": ("secret.png", f, "image/png")}, timeout=30)
    uploaded = r.json()[0]
    event, data = raw_call(url, api, raw_data(api, SHAPES[shape](uploaded)))
    assert event == "complete", (event, str(data)[:300])


def test_uploads_over_the_size_limit_are_refused(url, tmp_path):
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(51 * 2**20)  # 51 MB > max_file_size="50mb"
    with open(big, "rb") as f:
        r = httpx.post(f"{url}/gradio_api/upload", files={"files": ("big.png", f, "image/png")}, timeout=60)
    assert r.status_code in (413, 400), (r.status_code, r.text[:200])


# ----------------------------------------------------------------------------------------------------------
# Errors do not leak internals
# ----------------------------------------------------------------------------------------------------------
class LeakyBackend(SyntheticBackend):
    def encode(self, image):
        raise RuntimeError("secret-token-123 at /srv/private/weights.bin")


def test_unexpected_errors_do_not_leak_details(tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from tests.bad_inputs import good_jpeg

    with served(Explorer(ExplorerConfig(), loader=lambda config, progress=None: LeakyBackend())) as u:
        client = Client(u, verbose=False, download_files=False)
        with pytest.raises(AppError) as info:
            client.submit(image=handle_file(str(good_jpeg(tmp_path))), **CONTROLS,
                          api_name="/explore").result(timeout=60)
    message = str(info.value)
    assert "secret-token-123" not in message and "/srv/private" not in message
    assert "still running" in message  # the generic sentence, not a traceback


# ----------------------------------------------------------------------------------------------------------
# Loading a model never unpickles
# ----------------------------------------------------------------------------------------------------------
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _sources() -> list[Path]:
    """Every Python file of the app: explorer/**/*.py (backend/, pictures/ included), reducers/*.py, app.py."""
    return sorted((ROOT / "explorer").rglob("*.py")) + sorted((ROOT / "reducers").glob("*.py")) + [ROOT / "app.py"]


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _unsafe_calls(tree: ast.AST, filename: str) -> list[str]:
    found = []
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where} from {node.module} import …")
        elif isinstance(node, (ast.Name, ast.Attribute)):
            ident = node.id if isinstance(node, ast.Name) else node.attr
            if "pickle" in ident.lower():
                found.append(f"{where} uses {ident}")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
        if name == "load" and owner == "torch":
            wo = _keyword(node, "weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                found.append(f"{where} torch.load without weights_only=True")
        if name == "load" and owner in ("np", "numpy"):
            ap = _keyword(node, "allow_pickle")
            if isinstance(ap, ast.Constant) and ap.value is True:
                found.append(f"{where} numpy.load(allow_pickle=True)")
        for flag, bad in (("use_safetensors", False), ("trust_remote_code", True), ("weights_only", False)):
            value = _keyword(node, flag)
            if isinstance(value, ast.Constant) and value.value is bad:
                found.append(f"{where} {name}({flag}={bad})")
            elif value is not None and not isinstance(value, ast.Constant):
                found.append(f"{where} {name}({flag}=<not a constant>)")
        if name in ("__import__", "import_module") and node.args and isinstance(node.args[0], ast.Constant) \
                and str(node.args[0].value).split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where} imports {node.args[0].value} dynamically")
    return found


def test_model_loading_code_never_unpickles():
    sources = _sources()
    scanned = {p.relative_to(ROOT).as_posix() for p in sources}
    assert {"explorer/backend/models.py", "explorer/backend/dinov2.py", "explorer/backend/offline.py",
            "explorer/pictures/draw.py", "explorer/service/__init__.py", "reducers/base.py", "app.py"} <= scanned, scanned
    found = []
    for path in sources:
        found += _unsafe_calls(ast.parse(path.read_text(), filename=str(path)), path.relative_to(ROOT).as_posix())
    assert not found, "unsafe deserialisation:\n" + "\n".join(found)


def test_the_scanner_catches_what_it_looks_for():
    bad = ast.parse("import pickle\nimport torch\nx = torch.load(p)\ny = torch.load(p, weights_only=False)\n"
                    "m = M.from_pretrained(s, use_safetensors=False, trust_remote_code=True)\n")
    found = "\n".join(_unsafe_calls(bad, "bad.py"))
    for needle in ("import pickle", "torch.load without", "use_safetensors=False", "trust_remote_code=True"):
        assert needle in found, found
    good = ast.parse("import torch\nx = torch.load(p, weights_only=True)\nm = M.from_pretrained(s)\n")
    assert _unsafe_calls(good, "good.py") == []


def test_plain_text_grep_agrees():
    """The brief's grep, on code only: no `torch.load(`, `pickle` or `use_safetensors=False` outside docstrings
    and comments."""
    import io
    import tokenize

    for path in _sources():
        code = []
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if tok.type not in (tokenize.COMMENT, tokenize.STRING):
                code.append(tok.string)
        text = " ".join(code)
        for needle in ("pickle", "use_safetensors = False", "use_safetensors=False"):
            assert needle not in text, f"{path.name}: {needle}"
        assert "torch . load (" not in text or "weights_only = True" in text, path.name


@pytest.mark.slow
def test_offline_checkpoint_is_safetensors_only(offline_explorer):
    from safetensors import safe_open

    from explorer.backend import dinov2, offline

    config = offline_explorer.config  # built by the fixture, so these only locate the folders
    folders = [offline.checkpoint(config.model, config.seed), dinov2.dinov2_checkpoint(offline.cache_root())]
    for folder in folders:
        assert (folder / "model.safetensors").is_file(), folder
        unsafe = [p.name for p in folder.rglob("*")
                  if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt", ".pickle")]
        assert not unsafe, (folder, unsafe)
    folder = folders[0]
    weights = folder / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        assert len(list(f.keys())) > 0
    assert not (folder / "model.safetensors.index.json").exists() or all(
        name.endswith(".safetensors")
        for name in json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values())
