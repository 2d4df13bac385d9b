"""`python app.py --model FOLDER` on a local LLaVA-1.5 checkpoint folder (the tiny seeded one, saved with its
processor and locally built tokenizer), through the same launcher the app uses and gradio_client, with the
network blocked: /explore and /answer answer for every method, PAR on its offline query (no CLIP text tower is
reachable), and a refused family folder is one sentence while the folder's model keeps serving."""

from __future__ import annotations

import json

import pytest

from explorer.config import ExplorerConfig
from explorer.service import Explorer
from tests import tiny
from tests.test_bad_inputs import assert_clear, assert_valid, call, explore, explore_error, explore_kwargs, served
from tests.tiny import block_network  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("block_network")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny.save_tiny_llava(tmp_path_factory.mktemp("llava-folder"))


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    tiny.image(11, (120, 90)).save(path)
    return path


@pytest.fixture(scope="module")
def client(folder):
    with served(Explorer(ExplorerConfig(model=str(folder), device="cpu"))) as c:
        yield c


def test_every_method_explores_and_answers(client, folder, picture):
    from gradio_client import handle_file

    from reducers import REDUCERS

    for method in REDUCERS:
        out = explore(client, picture, model=str(folder), method=method)
        summary = out[-1]
        assert_valid(summary)
        assert summary["model"] == str(folder) and summary["n_tokens"] == tiny.N_PATCHES, method
        if method == "par":
            assert "PAR" in summary["notice"], summary["notice"]
        kwargs = explore_kwargs(handle_file(str(picture)), model=str(folder), method=method)
        answer = call(client, api_name="/answer", max_new_tokens=2, **kwargs)
        assert answer is not None, method


def test_a_refused_family_is_one_sentence_and_the_folder_keeps_serving(tmp_path, folder, picture):
    bad = tmp_path / "next"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "llava_next"}))
    explorer = Explorer(ExplorerConfig(model=str(bad), device="cpu"))
    with served(explorer) as c:
        message = explore_error(c, picture, model=str(bad), method="prumerge")
        assert_clear(message, "LLaVA-NeXT", "does not support yet")
        # the offline models listed beside it are what it keeps serving; here: the same server answers again
        assert explore_error(c, picture, model=str(bad), method="prumerge") == message
