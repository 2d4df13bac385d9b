"""The one control schema: settings from and to flat controls, validation sentences, clamping, conflicts, and a
toy method registered at run time that shows up everywhere — method choices, controls, API, export, comparison —
with no other file touched."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from explorer.config import ExplorerConfig
from explorer.errors import InputError
from explorer.service import Explorer
from explorer.settings import METHOD, InputParams, Schema, Settings
from reducers import REDUCERS, Reduction, RegistryEntry, VisualTokens, slider, toggle
from reducers.base import Trace, check_ranges

SCHEMA = Schema.build()


# --- the schema ------------------------------------------------------------------------------------------
def test_every_method_control_appears_once_with_its_owners():
    for method, entry in REDUCERS.items():
        for f in dataclasses.fields(entry.params):
            if "control" in f.metadata:
                spec = SCHEMA.specs[f.name]
                assert method in spec.owners and spec.default == f.default
    budget_owners = set(SCHEMA.specs["budget"].owners)
    assert budget_owners == {m for m, e in REDUCERS.items() if e.budgeted}
    assert SCHEMA.specs["attention"].owners == ("inputs",)


def test_method_controls_are_its_params_then_the_inputs_it_reads():
    assert SCHEMA.method_controls("par")[-2:] == ("rewrite", "joint_layer")
    assert SCHEMA.method_controls("prumerge") == ("iqr_multiplier", "merge", "neighbours", "order", "attention")
    assert SCHEMA.method_controls("all") == ()
    assert "attention" not in SCHEMA.method_controls("random")


def test_two_definitions_of_one_name_are_refused():
    @dataclass_params
    class Clash:
        budget: int = slider(5, 1, 10, 1, "another budget", "Budget")

    with pytest.raises(ValueError, match="one name is one control"):
        Schema.build({**REDUCERS, "clash": RegistryEntry(lambda vt, p: None, Clash, "Clash", "clashes")})


def dataclass_params(cls):
    return dataclasses.dataclass(frozen=True)(cls)


# --- settings ---------------------------------------------------------------------------------------------
def test_round_trip_through_flat_controls():
    s = Settings.from_controls({METHOD: "prumerge+", "iqr_multiplier": 2, "merge": "false", "budget": "17"}, SCHEMA)
    assert s.params.iqr_multiplier == 2.0 and s.params.merge is False
    assert Settings.from_controls(s.to_controls(), SCHEMA) == s
    assert s.value("budget") == 17  # kept for the budget methods although PruMerge+ does not read it
    assert s.as_dict() == {"method": "prumerge+", "params": {"iqr_multiplier": 2.0, "merge": False, "neighbours": 32,
                                                             "order": "attention"}, "inputs": {"attention": "official"}}


def test_key_changes_only_with_what_the_method_reads():
    a = Settings.from_controls({METHOD: "prumerge"}, SCHEMA)
    assert a.key() == a.with_values(tau=0.9, budget=3).key()
    assert a.key() != a.with_values(iqr_multiplier=2.0).key()
    assert a.key() != a.with_values(attention="head-mean").key()
    assert a.with_method("random").key() != a.with_method("random").with_values(budget=3).key()


@pytest.mark.parametrize("values,needle", [
    ({"tau": "abc"}, "tau must be a number"),
    ({"tau": 1.5}, "tau must be between 0 and 1"),
    ({"neighbours": 2.5, METHOD: "prumerge"}, "neighbours must be a whole number"),
    ({"seed": 2**63, METHOD: "random"}, "seed must be between 0 and 4294967295"),
    ({"merge": "maybe"}, "merge must be true or false"),
    ({"attention": "sideways"}, "attention must be one of official, head-mean"),
    ({METHOD: "nope"}, "Unknown method 'nope'"),
    ({"gamma": 0.5}, "Unknown setting 'gamma'"),
    ({"tau": float("nan")}, "tau must be a finite number"),
])
def test_bad_values_get_one_sentence_naming_the_control(values, needle):
    with pytest.raises(InputError) as info:
        Settings.from_controls(values, SCHEMA)
    assert needle in str(info.value) and "Invalid setting: Invalid setting" not in str(info.value)


def test_clamping_moves_typed_values_into_range_and_says_which():
    raw = {"cluster_threshold": 1.7, "budget": 0, "neighbours": 300.4}
    s = Settings.from_controls({METHOD: "par", **raw}, SCHEMA, clamp=True)
    assert s.value("cluster_threshold") == 1.0 and s.value("budget") == 1 and s.value("neighbours") == 256
    assert s.clamped(raw) == {"cluster_threshold": 1.0, "budget": 1, "neighbours": 256}


def test_query_points_are_validated():
    assert Settings.from_controls({METHOD: "par"}, SCHEMA, points=[[1, 2.5]]).points == ((1.0, 2.5),)
    for bad in ([["x", 1]], [[1]], [[float("inf"), 1]], [[0, 0]] * 300):
        with pytest.raises(InputError, match="query_points"):
            Settings.from_controls({METHOD: "par"}, SCHEMA, points=bad)


def test_every_params_default_is_valid():
    for entry in REDUCERS.values():
        check_ranges(entry.params())
    check_ranges(InputParams())


# --- a toy method registered at run time --------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ToyParams:
    stride: int = slider(3, 1, 10, 1, "Keep every stride-th patch", "Stride")
    from_end: bool = toggle(False, "Count the stride from the last patch", "From the end")

    def __post_init__(self):
        check_ranges(self)


def toy(vt: VisualTokens, params: ToyParams) -> Reduction:
    kept = torch.arange(vt.n)[:: params.stride]
    if params.from_end:
        kept = (vt.n - 1 - kept).flip(0)
    tokens = vt.features[kept]
    score = torch.linspace(0.0, 1.0, vt.n)
    return Reduction("toy", kept, tokens, vt.grid, {"tokens": vt.n, "to LLM": tokens.shape[0]},
                     trace=ToyTrace(score))


@dataclasses.dataclass(frozen=True, eq=False)
class ToyTrace(Trace):
    """The toy's own diagnostics: a score and one threshold line, nothing registered anywhere else."""

    score: torch.Tensor

    def heat(self):
        return "Toy score: how late the patch comes", self.score

    def lines(self):
        return [("toy line", 0.5)]

    def per_patch(self):
        return {"toy_score": self.score}

    def inspect(self, i):
        return [f"toy score {float(self.score[i]):.3f}"]


TOY = {**REDUCERS, "toy": RegistryEntry(toy, ToyParams, "Toy stride", "Every k-th patch", formula="kept = 0, k, 2k, …")}


@pytest.fixture(scope="module")
def toy_app():
    from gradio_client import Client

    from explorer.backend.synthetic import SyntheticBackend
    from tests.conftest import _launch

    explorer = Explorer(ExplorerConfig(), loader=lambda config, progress=None: SyntheticBackend(view_side=336),
                        methods=TOY)
    demo = _launch(explorer)
    try:
        yield demo, Client(demo.local_url, verbose=False)
    finally:
        demo.close()


@pytest.mark.slow
def test_a_method_registered_at_run_time_appears_everywhere(toy_app, tmp_path):
    from gradio_client import handle_file
    from PIL import Image

    demo, client = toy_app
    components = {c["props"].get("elem_id"): c["props"] for c in demo.config["components"] if c.get("props")}
    assert ["Toy stride", "toy"] in [list(ch) for ch in components["method"]["choices"]]
    assert components["ctl-stride"]["maximum"] == 10 and components["ctl-stride"]["label"] == "Stride"
    assert components["ctl-from_end"]["label"] == "From the end"
    params = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/explore"]["parameters"]
    assert {"stride", "from_end"} <= {p["parameter_name"] for p in params}

    image = tmp_path / "pic.png"
    Image.new("RGB", (64, 48), (200, 120, 40)).save(image)
    summary = client.predict(image=handle_file(str(image)), prompt="", method="toy", query_points=[], stride=5,
                             from_end=True, api_name="/explore")[-1]
    assert summary["params"] == {"stride": 5, "from_end": True} and summary["method_label"] == "Toy stride"
    assert summary["n_kept"] == len(range(0, 576, 5)) and summary["per_patch"]["kept"][-1] == 575

    json_file, _ = client.predict(api_name="/export")
    exported = json.loads(Path(json_file).read_text())
    again = Settings.from_controls(exported["controls"], Schema.build(TOY))
    assert again.method == "toy" and again.params == ToyParams(stride=5, from_end=True)

    _sweep, gallery, *_ = client.predict(image=handle_file(str(image)), prompt="", method="toy", query_points=[],
                                         stride=5, from_end=True, sweep_parameter="stride", api_name="/compare")
    captions = [entry["caption"] for entry in gallery]
    assert any(c.startswith("Toy stride · 116 tokens (at its own settings)") for c in captions)
    assert any(c.startswith("Random · 116 tokens (at M = 116)") for c in captions)


@pytest.mark.slow
def test_a_method_trace_shows_in_heatmap_histogram_export_and_inspector(toy_app, tmp_path):
    """The toy's trace (a score and one threshold line) reaches the heatmap, the histogram, the export and the
    patch inspector with no other file touched."""
    from gradio_client import handle_file
    from PIL import Image

    from explorer.backend.synthetic import SyntheticBackend
    from explorer.ui import patch_markdown

    _, client = toy_app
    image = tmp_path / "pic.png"
    Image.new("RGB", (64, 48), (90, 160, 40)).save(image)
    out = client.predict(image=handle_file(str(image)), prompt="", method="toy", query_points=[], stride=4,
                         from_end=False, api_name="/explore")
    heat_caption, histogram, summary = out[5], out[8], out[-1]
    assert heat_caption.startswith("Toy score: how late the patch comes")
    assert "Toy score" in json.dumps(histogram) and "toy line" in json.dumps(histogram)
    n = summary["n_tokens"]
    assert len(summary["per_patch"]["toy_score"]) == n and summary["per_patch"]["toy_score"][-1] == 1.0
    json_file, _ = client.predict(api_name="/export")
    assert json.loads(Path(json_file).read_text())["per_patch"]["toy_score"] == summary["per_patch"]["toy_score"]

    explorer = Explorer(ExplorerConfig(), loader=lambda config, progress=None: SyntheticBackend(view_side=336),
                        methods=TOY)
    try:
        settings = explorer.settings({METHOD: "toy", "stride": 4})
        explored, session = explorer.explore(str(image), "", settings)
        info = explorer.inspect(session, 0, 0, session.view_size)
        assert info["patch"] == 0 and "toy score 0.000" in patch_markdown(info)
        assert explored.histogram.layout.annotations[0].text == "toy line"
    finally:
        explorer.close()
