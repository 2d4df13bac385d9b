"""The Export tab: the session's last result as files (the copy-link button is a script, see `wiring`)."""

from __future__ import annotations

from ..common import one_sentence
from ..layout import Screen


@one_sentence
def export(ui: Screen, state, answers):
    """The session's last result as JSON (settings, per-patch data, answers with stamps, versions) and its
    pictures as a lossless PNG, both redrawn from the cached encode."""
    json_file, png_file = ui.explorer.export(state, answers)
    return {ui.layout.export_json: json_file, ui.layout.export_png: png_file}
