"""The house's shape, checked on the source (AST): rooms stay small, the session's keys are spelled in one
module, `Reduction` keeps only what every method has, nothing outside `reducers/` asks which method ran, and
the README's flow picture is the import graph."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from reducers import REDUCERS, Reduction, Trace

ROOT = Path(__file__).resolve().parent.parent
APP_CODE = sorted((ROOT / "explorer").rglob("*.py")) + [ROOT / "app.py"]  # everything outside reducers/
MAX_FUNCTION, MAX_CLASS = 80, 200


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno}"


# --- rooms of one job -----------------------------------------------------------------------------------------
def test_no_function_over_80_lines_and_no_class_over_200():
    found = []
    for path in APP_CODE:
        for node in ast.walk(parsed(path)):
            size = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and size > MAX_FUNCTION:
                found.append(f"{where(path, node)} def {node.name}: {size} lines")
            if isinstance(node, ast.ClassDef) and size > MAX_CLASS:
                found.append(f"{where(path, node)} class {node.name}: {size} lines")
    assert not found, "\n".join(found)


# --- the session --------------------------------------------------------------------------------------------
SESSION_HOLDERS = {"state", "session", "pinned"}  # the names session values travel under


def _spelled_keys(tree: ast.Module) -> list[ast.AST]:
    """`state["key"]`, `state.get("key")`, `(state or {}).get("key")` and the like on a session value."""
    def holder(node) -> bool:
        if isinstance(node, ast.Name):
            return node.id in SESSION_HOLDERS
        if isinstance(node, ast.BoolOp):
            return any(holder(v) for v in node.values)
        return False

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and holder(node.value) and isinstance(node.slice, ast.Constant):
            found.append(node)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and holder(node.func.value) and node.args and isinstance(node.args[0], ast.Constant)):
            found.append(node)
    return found


def test_session_keys_are_spelled_in_one_module():
    found = [where(path, node) for path in APP_CODE if path.name != "session.py"
             for node in _spelled_keys(parsed(path))]
    assert not found, "session keys spelled outside explorer/session.py: " + ", ".join(found)


def test_the_key_check_sees_a_spelled_key():
    assert _spelled_keys(ast.parse("x = (state or {}).get('view_size')\ny = pinned['kept']"))


# --- each method owns its diagnostics ------------------------------------------------------------------------
def test_reduction_keeps_at_most_12_fields():
    fields = [f.name for f in dataclasses.fields(Reduction)]
    assert len(fields) <= 12, fields
    assert "trace" in fields


def _method_specific_names() -> set[str]:
    """The fields of every method's trace and every method's params (what only one method has)."""
    shared = {f.name for f in dataclasses.fields(Reduction)}
    names = set()
    for path in sorted((ROOT / "reducers").glob("*.py")):
        if path.name == "base.py":  # the shared traces (e.g. TopScoreTrace's label) belong to no one method
            continue
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.ClassDef) and any(isinstance(b, ast.Name) and b.id.endswith("Trace")
                                                      for b in node.bases):
                names |= {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
    for entry in REDUCERS.values():
        names |= {f.name for f in dataclasses.fields(entry.params)}
    base = {name for name in dir(Trace) if not name.startswith("_")}
    return names - shared - base - {"budget"}  # `budget` is one control shared by the budget methods


def _asks_which_method(tree: ast.Module, methods: set[str], fields: set[str]) -> list[tuple[ast.AST, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):  # method == "par", "fastv" in …, name == "cluster_threshold"
            for operand in [node.left, *node.comparators]:
                if isinstance(operand, ast.Constant) and operand.value in methods | fields:
                    found.append((node, f"compares with {operand.value!r}"))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr")
                and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and node.args[1].value in fields):
            found.append((node, f"{node.func.id}(…, {node.args[1].value!r})"))
        if isinstance(node, ast.Attribute) and node.attr in fields:
            inner = node.value
            if isinstance(inner, ast.Attribute) and inner.attr in ("trace", "params"):  # red.trace.fence, s.params.tau
                found.append((node, f".{inner.attr}.{node.attr}"))
            if isinstance(inner, ast.Name) and inner.id in ("red", "reduction", "r"):  # red.relevance
                found.append((node, f"{inner.id}.{node.attr}"))
    return found


def test_no_method_name_or_method_field_is_tested_outside_reducers():
    methods, fields = set(REDUCERS), _method_specific_names()
    assert {"fence", "relevance", "merge_index", "tau", "spatial", "targets"} <= fields
    found = [f"{where(path, node)} {what}" for path in APP_CODE
             for node, what in _asks_which_method(parsed(path), methods, fields)]
    assert not found, "code outside reducers/ asks which method ran:\n" + "\n".join(found)


def test_the_method_check_sees_what_it_forbids():
    methods, fields = set(REDUCERS), _method_specific_names()
    for source in ('if red.trace.fence is not None: pass', 'x = settings.params.tau', 'y = method == "par"',
                   'z = hasattr(params, "spatial")', 'w = red.relevance'):
        assert _asks_which_method(ast.parse(source), methods, fields), source


# --- the README's flow picture is the import graph --------------------------------------------------------------
def _unit(module: str) -> str | None:
    """`explorer.service.view` → "explorer/service", `reducers.par` → "reducers", `app` → "app.py"."""
    parts = module.split(".")
    if parts[0] == "reducers":
        return "reducers"
    if parts[0] == "app":
        return "app.py"
    if parts[0] == "explorer" and len(parts) > 1:
        top = ROOT / "explorer" / parts[1]
        if top.is_dir() or top.with_suffix(".py").is_file():
            return f"explorer/{parts[1]}"
    return None


def import_graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in APP_CODE + sorted((ROOT / "reducers").glob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        source = _unit(".".join(rel.parts))
        package = list(rel.parts[:-1])
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets = [module] + [f"{module}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                unit = _unit(target)
                if unit and unit != source:
                    edges.setdefault(source, set()).add(unit)
    return edges


def readme_arrows() -> list[tuple[str, str]]:
    """The arrows of the first fenced block of README's Layout section: `A → B → C` lines, and lines starting
    with `→ X` whose source is the node that ends just left of the arrow on an earlier line."""
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1]
    block = re.search(r"```\n(.*?)```", layout, re.S).group(1)
    seen: list[tuple[int, str]] = []  # (end column, node) of every node drawn so far
    arrows = []
    for line in block.splitlines():
        previous = None
        for match in re.finditer(r"(→)|([^\s→]+)", line):
            if match.group(2):
                node = match.group(2)
                if previous is not None:
                    arrows.append((previous, node))
                previous = node
                seen.append((match.end(), node))
            elif previous is None:  # a line that starts with an arrow
                column = match.start()
                previous = max((s for s in seen if s[0] <= column), default=(0, None))[1]
    return arrows


def test_the_readme_flow_picture_matches_the_imports():
    arrows = readme_arrows()
    assert ("app.py", "explorer/ui") in arrows and ("explorer/ui", "explorer/service") in arrows
    graph = import_graph()
    missing = [f"{a} → {b}" for a, b in arrows if b not in graph.get(a, set())]
    assert not missing, "drawn but not imported: " + ", ".join(missing)
    drawn = {a for a, _ in arrows} | {b for _, b in arrows}
    downstream = {node: set() for node in drawn}  # everything a node reaches along the arrows
    changed = True
    while changed:
        changed = False
        for a, b in arrows:
            new = {b} | downstream[b]
            if not new <= downstream[a]:
                downstream[a] |= new
                changed = True
    backwards = [f"{a} imports {b}" for a in drawn for b in graph.get(a, set())
                 if b in drawn and a in downstream[b]]
    assert not backwards, "imports against the flow: " + ", ".join(backwards)


@pytest.mark.parametrize("name", ["explorer/ui", "explorer/service", "reducers"])
def test_every_drawn_room_has_its_line(name):
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1]
    assert f"- `{name}/`" in layout
