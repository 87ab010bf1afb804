"""docs/contributing.md's layout is the map of the whole house: checked against the modules' docstrings.

Every module under ``src/sd_lens`` has one line in the "Layout" section (every subpackage a heading
line), no line names a module that is gone, and each line agrees with its module: it names something
the module defines, or shares words with the first paragraph of the module's docstring (which every
module has). A new module therefore fails here until it is on the map.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "sd_lens"
PAGE = ROOT / "docs" / "contributing.md"
ENTRY = re.compile(r"^(?P<indent> *)\* (?:\*\*)?`(?P<name>[^`]+)`(?:\*\*)? — (?P<text>.*)$")
WORD = re.compile(r"[a-z][a-z0-9_]{4,}")


def layout() -> dict[str, str]:
    """``{path relative to src/sd_lens: its line's text}``; a package is ``"pkg/"``."""
    text = PAGE.read_text(encoding="utf-8")
    section = text[text.index("## Layout"):]
    section = section[: section.index("\n## ", 4)]
    out: dict[str, str] = {}
    package, last = "", None
    for line in section.split("\n"):
        m = ENTRY.match(line)
        if m:
            name = m["name"]
            if m["indent"] == "":
                package = name if name.endswith("/") else ""
                last = name
            else:
                last = package + name
            assert last not in out, f"contributing.md lists {last} twice"
            out[last] = m["text"]
        elif last is not None and line.startswith("  ") and line.strip() and not line.lstrip().startswith("*"):
            out[last] += " " + line.strip()
        elif not line.strip():
            last = None
    return out


def modules() -> dict[str, Path]:
    """``{path relative to src/sd_lens: file}`` of every module (a subpackage as ``"pkg/"``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        out[rel[: -len("__init__.py")] if rel.endswith("/__init__.py") else rel] = path
    return out


def defined_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names}
    return names


def test_every_module_is_on_the_map():
    listed, present = set(layout()), set(modules())
    assert not present - listed, f"add these to docs/contributing.md's layout: {sorted(present - listed)}"
    assert not listed - present, f"the layout lists modules that are gone: {sorted(listed - present)}"


def test_every_module_has_a_docstring():
    missing = [rel for rel, path in modules().items() if not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))]
    assert not missing, f"modules without a docstring: {missing}"


def test_each_line_agrees_with_its_module():
    """The line names a definition of the module, or shares a word of 5+ letters with its docstring's
    first paragraph."""
    files = modules()
    disagree = []
    for rel, text in layout().items():
        path = files[rel]
        first = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))).split("\n\n")[0].lower()
        named = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)", text)) & defined_names(path)
        shared = set(WORD.findall(text.lower())) & set(WORD.findall(first))
        if not named and not shared:
            disagree.append(f"{rel}: {text[:80]!r} vs {first[:80]!r}")
    assert not disagree, "layout lines that say nothing of their module's docstring:\n" + "\n".join(disagree)


def test_the_parser_reads_nested_and_wrapped_lines():
    entries = layout()
    assert "analyses/probe.py" in entries and "runtime/" in entries and "cli.py" in entries
    assert "analyses/causal/" in entries and "analyses/causal/engine.py" in entries  # a package in a package
    assert entries["runtime/tokens.py"].endswith("one token decoder.")
