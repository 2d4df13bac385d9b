"""Every control of the app, derived from the registry: one schema, flat control values ⇄ `Settings`.

A method's settings are the control fields of its params dataclass (`reducers.slider/toggle/choice/number`).
Besides them, `InputParams` holds the few controls that decide how an image's `VisualTokens` are built (which
CLS attention, PAR's prompt rewriting, the joint layer): they matter to a method only when it reads the field
they change (`INPUT_FIELDS`). `Schema.build(REDUCERS)` collects all of them once, by name — a name shared by
several methods (e.g. `budget`) is one control with one meaning, and two different definitions under one name
are refused. The UI builds its controls by looping over the schema, the API takes them as keyword arguments,
the export writes `Settings.to_controls()`, and `Settings.from_controls()` reads any of them back.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from reducers import REDUCERS, Control, RegistryEntry, choice, controls, toggle

from .errors import InputError

ATTENTION_MODES = ("official", "head-mean")
JOINT_LAYERS = ("feature", "last")
METHOD = "method"  # the control that picks the method


@dataclass(frozen=True)
class InputParams:
    """How the image's tokens are read out for the active method (not a reducer's own setting)."""

    attention: str = choice("official", ATTENTION_MODES, "official: full-width q·k of the layer that consumes the "
                            "features (hidden_states[-2] in LLaVA-1.5 and the offline models: the tower's last "
                            "layer), as PruMerge's code computes it (its paper says \"penultimate layer\"); "
                            "head-mean: per-head attention averaged (FasterVLM)", "CLS attention")
    rewrite: bool = toggle(True, "PAR embeds a content phrase of the question in several templates (off: the raw "
                           "prompt)", "Rewrite the prompt")
    joint_layer: str = choice("feature", JOINT_LAYERS, "PAR's patch embeddings: feature = the hidden state the LLM "
                              "consumes (hidden_states[-2] in LLaVA-1.5 and the offline models; TRIM's choice, "
                              "default); last = hidden_states[-1]; either through the tower's final norm (+ CLIP "
                              "projection)", "PAR joint layer")


# which VisualTokens field each input control changes: it is shown (and stamped) only for methods that read it
INPUT_FIELDS = MappingProxyType({"attention": "cls_attn", "rewrite": "query", "joint_layer": "joint"})


@dataclass(frozen=True)
class ControlSpec:
    name: str
    control: Control  # the first owner's; every owner's is equal to it up to `info`
    default: Any
    owners: tuple[str, ...]  # the methods that use it ("inputs" for an InputParams control)
    infos: tuple[str, ...] = ()  # each owner's one-line explanation (a shared budget means something per method)

    def info_for(self, method: str) -> str:
        return self.infos[self.owners.index(method)] if method in self.owners else self.control.info


@dataclass(frozen=True, eq=False)
class Schema:
    """All controls of a registry, once each, in a stable order (methods in registry order, then inputs)."""

    methods: Mapping[str, RegistryEntry]
    specs: Mapping[str, ControlSpec]

    @classmethod
    def build(cls, methods: Mapping[str, RegistryEntry] = REDUCERS) -> "Schema":
        found: dict[str, ControlSpec] = {}

        def add(name: str, control: Control, default, owner: str) -> None:
            if name == METHOD:
                raise ValueError(f"{owner} cannot name a parameter {METHOD!r}: it is the method picker")
            spec = found.get(name)
            if spec is None:
                found[name] = ControlSpec(name, control, default, (owner,), (control.info,))
            elif dataclasses.replace(spec.control, info="") != dataclasses.replace(control, info="") \
                    or spec.default != default:
                raise ValueError(f"{owner}.{name} is defined differently from {spec.owners[0]}.{name}: one name is "
                                 "one control (one API keyword); rename one of them")
            else:
                found[name] = dataclasses.replace(spec, owners=spec.owners + (owner,), infos=spec.infos + (control.info,))

        for method, entry in methods.items():
            for name, control, default in controls(entry.params):
                add(name, control, default, method)
        for name, control, default in controls(InputParams):
            add(name, control, default, "inputs")
        return cls(MappingProxyType(dict(methods)), MappingProxyType(found))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.specs)

    def defaults(self) -> dict[str, Any]:
        return {name: spec.default for name, spec in self.specs.items()}

    def method_controls(self, method: str) -> tuple[str, ...]:
        """The controls that change what `method` does: its own params, then the inputs it reads."""
        entry = self.entry(method)
        own = tuple(name for name, _, _ in controls(entry.params))
        inputs = tuple(name for name, f in INPUT_FIELDS.items() if f in entry.needs)
        return own + inputs

    def entry(self, method: str) -> RegistryEntry:
        try:
            return self.methods[method]
        except KeyError:
            raise InputError(f"Unknown method {method!r}; choose one of {', '.join(self.methods)}.") from None


@dataclass(frozen=True)
class Settings:
    """The method and every control's value (validated), plus the points PAR's query was pointed at.

    `values` holds every control of the schema (so switching method or comparing methods uses each method's
    own values); `params` is the active method's params object; `relevant()` the controls that matter to it.
    """

    method: str
    values: tuple[tuple[str, Any], ...]
    points: tuple[tuple[float, float], ...] = ()
    schema: Schema = field(default=None, compare=False, repr=False)

    @classmethod
    def from_controls(cls, values: Mapping[str, Any] | None = None, schema: Schema | None = None,
                      points=(), clamp: bool = False) -> "Settings":
        """Settings from flat control values (missing ones take their defaults). Raises `InputError` naming the
        control for anything unusable; with `clamp`, numbers outside a slider's range are moved to its nearest
        end instead (`clamped()` tells which)."""
        schema = schema or Schema.build()
        values = dict(values or {})
        method = values.pop(METHOD, None)
        method = next(iter(schema.methods)) if method is None else method
        if not isinstance(method, str):
            raise InputError(f"method must be a method name, got {method!r}.")
        schema.entry(method)
        unknown = sorted(set(values) - set(schema.specs))
        if unknown:
            raise InputError(f"Unknown setting {unknown[0]!r}; the settings are {', '.join(schema.names)}.")
        out = []
        for name, spec in schema.specs.items():
            raw = values.get(name, spec.default)
            out.append((name, coerce(name, spec.control, raw, clamp)))
        settings = cls(method, tuple(out), _points(points), schema)
        settings.params  # validate the active method's params now (one sentence on failure)
        settings.inputs
        return settings

    def to_controls(self) -> dict[str, Any]:
        """{"method": …, every control: value} — what `from_controls` reads back."""
        return {METHOD: self.method, **dict(self.values)}

    def value(self, name: str):
        return dict(self.values)[name]

    def params_for(self, method: str):
        """`method`'s params object built from these control values."""
        entry = self.schema.entry(method)
        values = dict(self.values)
        try:
            return entry.params(**{name: values[name] for name, _, _ in controls(entry.params)})
        except (TypeError, ValueError) as err:
            raise InputError(f"Invalid setting for {entry.label}: {err}.") from None

    @property
    def params(self):
        return self.params_for(self.method)

    @property
    def inputs(self) -> InputParams:
        values = dict(self.values)
        return InputParams(**{name: values[name] for name, _, _ in controls(InputParams)})

    @property
    def entry(self) -> RegistryEntry:
        return self.schema.entry(self.method)

    def with_method(self, method: str) -> "Settings":
        self.schema.entry(method)
        return dataclasses.replace(self, method=method)

    def with_values(self, **changes) -> "Settings":
        return Settings.from_controls({**self.to_controls(), **changes}, self.schema, self.points)

    def relevant(self, method: str | None = None) -> dict[str, Any]:
        """The controls that change what `method` (default: the active one) does, by name."""
        values = dict(self.values)
        return {name: values[name] for name in self.schema.method_controls(method or self.method)}

    def key(self, method: str | None = None) -> tuple:
        """A hashable key of everything that decides `method`'s reduction of one image and prompt."""
        method = method or self.method
        points = self.points if "query" in self.schema.entry(method).needs else ()
        return (method, tuple(self.relevant(method).items()), points)

    def as_dict(self) -> dict:
        """What produced a result, for summaries, stamps and exports: the method, its settings, its inputs."""
        own = {name for name, _, _ in controls(self.entry.params)}
        relevant = self.relevant()
        out = {
            "method": self.method,
            "params": {k: v for k, v in relevant.items() if k in own},
            "inputs": {k: v for k, v in relevant.items() if k not in own},
        }
        if self.points and "query" in self.entry.needs:
            out["query_points"] = [list(p) for p in self.points]
        return out

    def describe(self) -> dict[str, str]:
        """The one text form of these settings: {"method": name, then each control that matters to it: its value
        as text} (`true`/`false`, numbers as Python writes them), in schema order. History and pin labels
        (`label()`), answer stamps, export names and the page's address all read it, so a setting is spelled
        one way wherever it is shown; `from_controls` reads every value back."""
        return {METHOD: self.method, **{k: _text(v) for k, v in self.relevant().items()}}

    def label(self) -> str:
        """The method's name and what it was given, e.g. `PruMerge (iqr_multiplier=1.5, merge=true, …)`."""
        pairs = ", ".join(f"{k}={v}" for k, v in self.describe().items() if k != METHOD)
        return f"{self.entry.label} ({pairs})" if pairs else self.entry.label

    def clamped(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """The controls whose value here differs from the number the user sent (moved into range)."""
        values = dict(self.values)
        out = {}
        for name, value in raw.items():
            if name in values and self.schema.specs[name].control.kind in ("slider", "number"):
                try:
                    if float(value) != float(values[name]):
                        out[name] = values[name]
                except (TypeError, ValueError):
                    pass
        return out


def coerce(name: str, control: Control, raw, clamp: bool = False):
    """One control value as its type, or `InputError` with one sentence naming the control."""
    if control.kind == "toggle":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, (int, float)) and raw in (0, 1):
            return bool(raw)
        text = str(raw).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off", ""):
            return False
        raise InputError(f"{name} must be true or false, got {raw!r}.")
    if control.kind == "choice":
        if raw not in control.options:
            raise InputError(f"{name} must be one of {', '.join(control.options)}, got {raw!r}.")
        return raw
    if isinstance(raw, bool):
        raise InputError(f"{name} must be a number, got {raw!r}.")
    try:
        value = float(raw)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{name} must be a number, got {raw!r}.") from None
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {raw!r}.")
    if clamp:
        value = min(max(value, control.minimum), control.maximum)
    elif not control.minimum <= value <= control.maximum:
        low, high = (f"{int(v)}" if control.integer else f"{v:g}" for v in (control.minimum, control.maximum))
        raise InputError(f"{name} must be between {low} and {high}, got {raw!r}.")
    if control.integer:
        if clamp:
            value = float(round(value))
        if value != int(value):
            raise InputError(f"{name} must be a whole number, got {raw!r}.")
        return int(value)
    return value


def _text(value) -> str:
    """A control value as `describe` writes it."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _points(points) -> tuple[tuple[float, float], ...]:
    """Query points as ((x, y), …) in the user's image pixels, or InputError."""
    if points is None or points == "":
        return ()
    try:
        out = tuple((float(p[0]), float(p[1])) for p in points)
    except (TypeError, ValueError, IndexError, KeyError):
        raise InputError("query_points must be a list of [x, y] pixel coordinates in the image.") from None
    if len(out) > 256 or not all(math.isfinite(v) for p in out for v in p):
        raise InputError("query_points must be at most 256 finite [x, y] pixel coordinates.")
    return out
