"""The control column: the first screen (the settings in the address, or the first example), an example
clicked, and a method picked (only its controls shown)."""

from __future__ import annotations

import gradio as gr

from ...errors import InputError
from ...service import view
from ...settings import METHOD
from ..common import DEFAULT_PROMPT
from ..layout import Screen


def on_method(ui: Screen, method):
    """Show only the active method's controls; the sweep lists its sliders."""
    schema, page = ui.explorer.schema, ui.layout
    visible = set(schema.method_controls(method))
    fields = view.sweep_fields(schema.entry(method)) or ["(none)"]
    out = {page.controls[n]: gr.update(visible=True, info=schema.specs[n].info_for(method)) if n in visible
           else gr.update(visible=False) for n in page.names}
    return {**out, page.sweep_parameter: gr.Dropdown(choices=fields, value=fields[0]),
            page.query_box: gr.update(visible="query" in schema.entry(method).needs)}


def start(ui: Screen, request: gr.Request):
    """First screen: the settings in the address (?method=…&tau=…) or the first example, loaded at once."""
    schema, names = ui.explorer.schema, ui.layout.names
    params = dict(request.query_params) if request is not None else {}
    method = params.get(METHOD)
    controls = {k: v for k, v in params.items() if k in names}
    ex0 = ui.examples[0] if ui.examples else None
    if method not in schema.methods:
        method = (ex0 or {}).get("method", ui.first_method) if not controls else ui.first_method
        if ex0 and not controls:
            controls = {k: v for k, v in ex0.get("settings", {}).items() if k in names}
    image = ex0["path"] if ex0 else None
    prompt = ex0["prompt"] if ex0 else DEFAULT_PROMPT
    return screen_values(ui, image, prompt, method, controls, (ex0 or {}).get("points", []), clamp=True)


def pick_example(ui: Screen, evt: gr.SelectData):
    if not isinstance(evt.index, int) or isinstance(evt.index, bool) or not 0 <= evt.index < len(ui.examples):
        raise gr.Error(f"There is no example {str(evt.index)[:20]}; click one of the examples.",
                       print_exception=False)
    row = ui.examples[evt.index]
    return screen_values(ui, row["path"], row["prompt"], row.get("method", ui.first_method), row.get("settings", {}),
                         row.get("points", []))


def screen_values(ui: Screen, image, prompt, method, controls, points, clamp=False) -> dict:
    """The image, prompt, method, query points and every control for a method and its settings (the first
    method at its defaults when they are unusable)."""
    page = ui.layout
    try:
        settings = ui.explorer.settings({METHOD: method, **controls}, clamp=clamp)
    except InputError:
        settings = ui.explorer.settings({METHOD: ui.first_method})
    values = settings.to_controls()
    return {page.image: image, page.prompt: prompt, page.method: values[METHOD], page.query_points: points,
            **{page.controls[n]: values[n] for n in page.names}}
