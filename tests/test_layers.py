"""The package's layout is its table of contents: data flows one way, and no module
imports a layer above its own (at import time or inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "scfm_audit"

#: bottom to top; a module may import its own layer and the layers below it
LAYERS = [
    ("_registry", "_io", "_typing", "_executor"),
    ("data",),
    ("models",),
    ("edges",),
    ("stats",),
    ("evaluate",),
    ("plotting",),
    ("analyses",),
    ("report",),  # renders the RunResult (defined in analyses/) it is handed
    ("pipeline",),  # orchestrates a run and asks the report to render it
    ("cli", "__main__", "__init__"),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _layer(module: str) -> str:
    parts = module.split(".")
    # ``from scfm_audit import __version__``: the package root holds only the version and
    # lazy accessors, so importing it is importing the ground floor
    return parts[1] if len(parts) > 1 else "_registry"


def _imports(path: Path) -> list[tuple[int, str]]:
    # every import counts, those under ``if TYPE_CHECKING:`` too: a type that must be
    # hidden from the import graph is a type in the wrong layer
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("scfm_audit")
        ):
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("scfm_audit.")]
    return out


FILES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_a_layer_above_its_own(path):
    rel = path.relative_to(SRC)
    own = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem
    assert own in RANK, f"{rel}: folder {own!r} is not in the layer table"
    bad = [
        f"line {line}: {mod}"
        for line, mod in _imports(path)
        if _layer(mod) in RANK and RANK[_layer(mod)] > RANK[own]
    ]
    assert not bad, f"{rel} ({own}) imports a higher layer: {bad}"
