"""Test-wide settings (never touch the network or send analytics) and the shared launched-app fixtures."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402


def _launch(explorer):
    """The app as `python app.py` launches it (same queue, page style and limits), on a free loopback port."""
    from explorer.ui import build_demo, serve

    return serve(build_demo(explorer), explorer.config, prevent_thread_lock=True, server_name="127.0.0.1",
                 server_port=None, quiet=True)


@pytest.fixture(scope="session")
def offline_explorer():
    """The app's service on the offline default (SmolLM2 from the wheel, seeded vision tower), loaded once."""
    from explorer.config import ExplorerConfig
    from explorer.service import Explorer

    explorer = Explorer(ExplorerConfig())
    explorer.backend()  # load now, so the first test does not pay for it inside a timeout
    return explorer


@pytest.fixture(scope="session")
def app(offline_explorer):
    """A launched app on the offline default: yields (demo, local_url). Shared by the client and browser tests."""
    demo = _launch(offline_explorer)
    try:
        yield demo, demo.local_url
    finally:
        demo.close()


@pytest.fixture()
def client(app):
    """A fresh gradio_client session against the launched app."""
    from gradio_client import Client

    return Client(app[1], verbose=False)
