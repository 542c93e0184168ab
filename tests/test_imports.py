"""Every import points down: the modules of ``src/sfsr`` sit in layers (docs/architecture.md,
"Layers"), and a module imports only modules of its own layer or of layers below it; no modules
import each other in a circle.

The imports are read from the source with :mod:`ast`, nothing is imported. Both rules count every
``import``/``from ... import`` of an ``sfsr`` module wherever it stands: at the top of a module, inside
a function (the lazy imports that keep torch out of light jobs), under ``if TYPE_CHECKING`` or in a
``try``. So a lazy import cannot hide an upward edge, nor close a circle that would only show at
run time. An import names the module it imports from (``from sfsr.models import build_classifier``
-> ``sfsr.models``; ``from sfsr import io`` -> ``sfsr.io``); the package ``__init__`` files Python
runs on the way count as modules of their own, with their own imports.

A new module must be given a layer in :data:`LAYERS` (the test names it otherwise).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

#: Bottom to top; a module is in the layer of the longest name that is it or a package above it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("sfsr", "sfsr.errors", "sfsr.threads", "sfsr.memory", "sfsr.safe_load", "sfsr.io",
              "sfsr.outputs", "sfsr.schema", "sfsr.provenance", "sfsr.gpu_slots", "sfsr.model_options",
              "sfsr.figures")),
    ("data", ("sfsr.data", "sfsr.tensors")),
    ("measures", ("sfsr.metrics", "sfsr.stats")),
    ("models", ("sfsr.models",)),
    ("objectives", ("sfsr.losses", "sfsr.semantic")),
    ("training", ("sfsr.training",)),
    ("evaluation", ("sfsr.evaluation", "sfsr.perceptual_metrics", "sfsr.classification", "sfsr.refsr",
                    "sfsr.inference", "sfsr.analysis")),
    ("plots", ("sfsr.plots",)),
    ("entry", ("sfsr.workflow", "sfsr.cli", "sfsr.config", "sfsr.training.worker")),
]


def modules(src: Path) -> dict[str, Path]:
    """Dotted name -> file of every module under ``src/sfsr`` (a package by its ``__init__.py``)."""
    out = {}
    for path in sorted((src / "sfsr").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_edges(src: Path) -> list[tuple[str, str, int]]:
    """``(importer, imported, line)`` for every import of an sfsr module, at any depth."""
    mods = modules(src)

    def known(name: str) -> str:
        while name not in mods:
            name = name.rpartition(".")[0]
        return name

    edges = []
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x, from ..data import y
                    up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                # from package import module -> the module; from module import name -> the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for target in targets:
                if target == "sfsr" or target.startswith("sfsr."):
                    imported = known(target)
                    if imported != name:
                        edges.append((name, imported, node.lineno))
    return edges


def layer_of(module: str) -> int | None:
    """Index in :data:`LAYERS` (0 = bottom), or None for a module no layer names."""
    best, found = -1, None
    for index, (_, names) in enumerate(LAYERS):
        for prefix in names:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    return found


def upward_imports(edges: list[tuple[str, str, int]]) -> list[str]:
    out = []
    for importer, imported, line in sorted(set(edges)):
        low, high = layer_of(importer), layer_of(imported)
        if low is not None and high is not None and high > low:
            out.append(f"{importer} (layer {LAYERS[low][0]}) imports {imported} (layer {LAYERS[high][0]}) "
                       f"on line {line}")
    return out


def cycles(edges: list[tuple[str, str, int]]) -> list[list[str]]:
    """The groups of modules that import each other in a circle (strongly connected components of
    more than one module; Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_every_module_has_a_layer():
    missing = sorted(m for m in modules(SRC) if layer_of(m) is None)
    assert not missing, f"give these modules a layer in LAYERS (and docs/architecture.md): {missing}"


def test_every_import_points_down():
    bad = upward_imports(import_edges(SRC))
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(bad)


def test_no_import_cycles():
    found = cycles(import_edges(SRC))
    assert not found, "modules that import each other in a circle: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_documented_layers_are_the_tested_ones():
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^\| \d+ `(\w+)` \|", section, flags=re.M) == [name for name, _ in LAYERS]


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "sfsr" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checks_catch_an_upward_import_and_a_circle(tmp_path):
    """What the checks would say of an old tree: a lazy import from a low module to a high one and a
    circle closed inside a function both count."""
    src = _tree(tmp_path, {
        "__init__.py": "",
        "tensors.py": "from sfsr.data.images import to_rgb\n",
        "data/__init__.py": "",
        "data/images.py": "def f():\n    from sfsr.training.data import x\n",
        "training/__init__.py": "",
        "training/data.py": "X = 1\n",
        "training/loop.py": "from sfsr.training import distributed\n",
        "training/distributed.py": "def main():\n    from sfsr.training.loop import train\n",
        "semantic.py": "from . import tensors\nfrom .training.data import X\n",
    })
    edges = import_edges(src)
    assert ("sfsr.semantic", "sfsr.tensors", 1) in edges
    assert upward_imports(edges) == [
        "sfsr.data.images (layer data) imports sfsr.training.data (layer training) on line 2",
        "sfsr.semantic (layer objectives) imports sfsr.training.data (layer training) on line 2"]
    assert cycles(edges) == [["sfsr.training.distributed", "sfsr.training.loop"]]


@pytest.mark.parametrize("module, layer", [("sfsr", "base"), ("sfsr.data.manifest", "data"),
                                           ("sfsr.models.classifier", "models"),
                                           ("sfsr.training.loop", "training"),
                                           ("sfsr.training.worker", "entry")])
def test_layer_of(module, layer):
    assert LAYERS[layer_of(module)][0] == layer
