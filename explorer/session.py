"""One visitor's session, typed: the only module that spells the keys of what a `gr.State` holds.

A `Session` names the image (upload path, content key, model) and the last explore's settings, prompt, stamp,
history and light summary — never tensors: those live in the service's bounded caches, keyed by image content
and settings, so sessions cannot see each other's work. The UI keeps a `Session` in a `gr.State` and hands it to
the service, which returns a new one (frozen: an event never changes the value another event is reading).

`to_state()` / `from_state()` give the same session as plain data (JSON-able), for code that keeps or sends a
dict; `Session.of` accepts either. The pinned result A and the answers on screen are kept in their own states
(each written by one kind of event only, so concurrent events never undo each other): `Pinned` and
`answers_stale` below.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from .settings import Schema, Settings

HISTORY = 8  # runs the history keeps (newest first)


@dataclass(frozen=True)
class Run:
    """One entry of the history: its label and the settings (points included) that restore it."""

    label: str
    settings: Settings


@dataclass(frozen=True)
class Session:
    path: str | None = None  # the upload the image came from
    key: str | None = None  # the encode's content key (the backend's cache)
    model: str | None = None
    image_name: str = "image"
    crop_box: tuple[float, float, float, float] | None = None  # the region the model sees, in image pixels
    view_size: tuple[int, int] | None = None  # the displayed view's pixels
    n_tokens: int | None = None  # N of the last explore
    settings: Settings | None = None  # the last explore's (points included)
    prompt: str = ""
    stamp: dict | None = None  # what produced the screen (answers compare theirs with it)
    history: tuple[Run, ...] = ()
    last_summary: dict | None = None  # the summary without per-patch data (the Explain tab)

    @classmethod
    def of(cls, value: "Session | Mapping | None", schema: Schema) -> "Session":
        """A session from what a caller holds: a Session, its `to_state()` dict, or nothing yet."""
        if isinstance(value, Session):
            return value
        return cls.from_state(value, schema)

    def same_image(self, path: str | None, model: str) -> bool:
        return bool(path) and self.path == path and self.model == model and self.key is not None

    def with_image(self, path: str | None, key: str, model: str, name: str) -> "Session":
        return dataclasses.replace(self, path=path, key=key, model=model, image_name=name)

    def explored(self, settings: Settings, prompt: str, stamp: dict, view_size, crop_box, n_tokens: int,
                 summary: dict, n_kept: int) -> "Session":
        """This session after an explore of `settings`: the screen's stamp, the view, the history."""
        runs = [r for r in self.history if r.settings != settings]
        run = Run(f"{settings.label()} → {n_kept} tokens", settings)
        return dataclasses.replace(self, settings=settings, prompt=prompt, stamp=stamp, view_size=tuple(view_size),
                                   crop_box=tuple(crop_box), n_tokens=n_tokens, last_summary=summary,
                                   history=(run, *runs[: HISTORY - 1]))

    def run(self, index) -> Run | None:
        """The history's run at `index` (as a dropdown sends it), or None."""
        try:
            i = int(index)
        except (TypeError, ValueError):
            return None
        return self.history[i] if 0 <= i < len(self.history) else None

    # --- plain data ------------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["settings"] = _controls(self.settings)
        out["history"] = [{"label": r.label, "settings": _controls(r.settings)} for r in self.history]
        for name in ("crop_box", "view_size"):
            out[name] = list(out[name]) if out[name] is not None else None
        return out

    @classmethod
    def from_state(cls, state: Mapping | None, schema: Schema) -> "Session":
        state = dict(state or {})
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in state.items() if k in known}
        values["settings"] = _settings(values.get("settings"), schema)
        values["history"] = tuple(Run(r["label"], _settings(r["settings"], schema)) for r in values.get("history") or ())
        for name in ("crop_box", "view_size"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)


def _controls(settings: Settings | None) -> dict | None:
    if settings is None:
        return None
    return {"controls": settings.to_controls(), "points": [list(p) for p in settings.points]}


def _settings(data: Mapping | None, schema: Schema) -> Settings | None:
    if not data:
        return None
    return Settings.from_controls(data["controls"], schema, data.get("points") or ())


@dataclass(frozen=True)
class Pinned:
    """The result pinned as A: its image, its kept patches, its token count and label."""

    image: str
    kept: tuple[int, ...]
    n_kept: int
    label: str


def answers_stale(answers: Mapping | None, session: Session | None) -> bool:
    """Whether the answers on screen (the /answer info, with its stamp) were produced by other settings than the
    ones the screen shows."""
    return bool(answers) and answers.get("stamp") != (session.stamp if session is not None else None)
