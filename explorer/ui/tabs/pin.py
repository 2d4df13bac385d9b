"""The Pin & compare tab: pin the current result as A, compare later ones (B) with it, and the recent runs."""

from __future__ import annotations

import gradio as gr

from ...session import Session
from ...settings import METHOD
from ..common import one_sentence
from ..layout import Screen


UNPINNED = "Pin a result (A), change any setting, and compare it with the current one (B) here."


@one_sentence
def pin(ui: Screen, state):
    page = ui.layout
    pinned = ui.explorer.pin(state)
    diff, md = pin_view(ui, state, pinned)
    return {page.diff_img: diff, page.diff_md: md, page.pinned: pinned}


def pin_view(ui: Screen, state, pinned):
    if not pinned:
        return None, UNPINNED
    return ui.explorer.pin_diff(state, pinned)


def restore(ui: Screen, choice, state):
    """A run from the history → its method and settings back on the controls."""
    page = ui.layout
    run = ui.explorer.session(state).run(choice)
    if run is None:
        return {page.method: gr.skip()}
    controls = run.settings.to_controls()
    return {page.method: controls[METHOD], page.query_points: gr.update(value=[list(p) for p in run.settings.points]),
            **{page.controls[n]: controls[n] for n in page.names}}


def history_choices(session: Session) -> gr.Dropdown:
    return gr.Dropdown(choices=[(run.label, i) for i, run in enumerate(session.history)], value=None)
