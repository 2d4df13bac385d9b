"""The public API does not change under a refactor: `Client.view_api()` of the launched app (on the synthetic
backend, so it needs no model) equals the snapshot taken before the house was split into packages
(tests/fixtures/api.json). A deliberate API change updates the fixture with
`python -m tests.test_api_snapshot tests/fixtures/api.json` and says so in its commit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "api.json"


def current_api() -> dict:
    from gradio_client import Client

    from explorer.backend.synthetic import SyntheticBackend
    from explorer.config import ExplorerConfig
    from explorer.service import Explorer
    from tests.conftest import _launch

    explorer = Explorer(ExplorerConfig(), loader=lambda config, progress=None: SyntheticBackend(view_side=336))
    demo = _launch(explorer)
    try:
        return Client(demo.local_url, verbose=False).view_api(return_format="dict", print_info=False)
    finally:
        demo.close()
        explorer.close()


@pytest.mark.slow
def test_the_api_is_the_snapshot():
    expected = json.loads(FIXTURE.read_text())
    api = json.loads(json.dumps(current_api()))  # tuples → lists, as the fixture holds them
    assert sorted(api["named_endpoints"]) == sorted(expected["named_endpoints"])
    for name, endpoint in expected["named_endpoints"].items():
        assert api["named_endpoints"][name] == endpoint, name
    assert api == expected


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(current_api(), indent=1, sort_keys=True, ensure_ascii=False))
