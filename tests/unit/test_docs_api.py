"""The API reference cannot fall behind the package.

The reference is the ``::: module`` lines (mkdocstrings) of the pages under ``docs/api/``. This
test discovers the package's public modules (every ``src/sd_lens/**/*.py`` whose path has no part
starting with ``_``) and fails if one of them, or the module defining a name of ``sd_lens.__all__``,
has no ``:::`` line there; it also fails on a ``:::`` line naming a module that does not exist.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

import sd_lens

SRC = Path(sd_lens.__file__).parent
API_DOCS = Path(__file__).resolve().parents[2] / "docs" / "api"
DIRECTIVE = re.compile(r"^:::\s+([\w.]+)\s*$", re.MULTILINE)


def documented_modules() -> dict[str, str]:
    """``{module: page}`` for every ``::: module`` line of the API pages."""
    found = {}
    for page in sorted(API_DOCS.glob("*.md")):
        for name in DIRECTIVE.findall(page.read_text(encoding="utf-8")):
            found[name] = page.name
    return found


def public_modules() -> list[str]:
    """Dotted names of the package's public modules, discovered from the source tree."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        if any(part.startswith("_") for part in rel.parts):
            continue  # __init__.py, private modules and private subpackages
        out.append(".".join(rel.parts))
    return out


def defining_module(name: str) -> str:
    """The module that defines ``sd_lens.<name>`` (where its reference entry lives)."""
    obj = getattr(sd_lens, name)
    if inspect.isclass(obj) or inspect.isfunction(obj):
        return obj.__module__
    # a constant or alias: the public module that binds it at top level, other than a package
    owners = [
        mod for mod in public_modules()
        if name in vars(importlib.import_module(mod)) and vars(importlib.import_module(mod))[name] is obj
    ]
    assert owners, f"sd_lens.{name} is bound in no public module"
    return owners[0]


def test_the_api_pages_exist():
    assert API_DOCS.is_dir() and documented_modules(), f"no ::: lines under {API_DOCS}"


def test_the_module_discovery_sees_the_layout():
    mods = public_modules()
    assert len(mods) > 25
    for expected in ("sd_lens.runtime.engine", "sd_lens.models.view", "sd_lens.analyses.probe", "sd_lens.pipeline"):
        assert expected in mods
    assert not any(m.split(".")[-1].startswith("_") for m in mods)


@pytest.mark.parametrize("module", public_modules())
def test_every_public_module_is_in_the_api_reference(module):
    assert module in documented_modules(), (
        f"{module} has no ':::' line in docs/api/*.md; add '::: {module}' to the page of its "
        "subpackage (see docs/api/index.md)"
    )


@pytest.mark.parametrize("name", sorted(sd_lens.__all__))
def test_every_exported_name_is_in_the_api_reference(name):
    module = defining_module(name)
    assert module in documented_modules(), f"sd_lens.{name} is defined in {module}, which has no ':::' line in docs/api/"


def test_every_api_directive_names_a_real_module():
    for module, page in documented_modules().items():
        try:
            importlib.import_module(module)
        except ImportError as exc:  # pragma: no cover - the failure message is the point
            pytest.fail(f"docs/api/{page}: '::: {module}' does not import: {exc}")
