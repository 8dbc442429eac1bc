"""The import graph of cappy's own modules: no circle, and no import from a lower layer into a higher one.

Every import counts, those inside functions too (a deferred import is still a dependency). Read from the source
with ``ast``, so the test needs no import of the package and sees modules no other test loads.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A module may import its own layer and the layers below it. The package root `cappy` is a facade
# (lazy `Cappy`, `adapt`, `best_of_n`) and is left out of the layer rule, not of the circle check.
LAYERS = [
    ("errors", "io", "paths", "logs", "config", "chat"),
    ("model", "metrics"),
    ("data",),
    ("generate",),
    ("train",),
    ("boost", "adaptation", "evaluate", "batch"),
    ("serve", "integrations"),
    ("demo",),
    ("cli", "__main__"),
]
# Inside cappy.model, lowest first: the package's own order (see its docstring).
MODEL_LAYERS = ["precision", "encoding", "record", "checkpoint", "backends", "scorer", "quantize"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the cappy modules it imports (``from cappy.x import y`` is cappy.x.y if that is a module)."""
    files = {module_name(p): p for p in (SRC / "cappy").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.split(".")[0] == "cappy")
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "cappy":
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    targets.add(sub if sub in files else node.module)
        graph[name] = {t for t in targets if t != name}
    return graph


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None
    for i, names in enumerate(LAYERS):
        if parts[1] in names:
            return i
    raise AssertionError(f"{module} is in no layer of this test's LAYERS; add it there")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_graph_is_read():
    graph = import_graph()
    # known edges, so that a parser that finds nothing cannot pass the tests below
    assert "cappy.model.precision" in graph["cappy.generate.hf"]
    assert "cappy.model.checkpoint" in graph["cappy.model.scorer"]
    assert "cappy.model.record" in graph["cappy.evaluate.guard"]


def test_no_import_circle():
    assert find_cycle(import_graph()) is None, f"import circle: {' -> '.join(find_cycle(import_graph()) or [])}"


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_lower_layer_imports_a_higher_one():
    wrong = []
    for module, targets in import_graph().items():
        here = layer_of(module)
        if here is None:
            continue
        for t in targets:
            there = layer_of(t)
            if there is not None and there > here:
                wrong.append(f"{module} ({LAYERS[here][0]} layer) imports {t} ({LAYERS[there][0]} layer)")
    assert not wrong, "\n".join(sorted(wrong))


def test_model_submodules_import_only_lower_ones():
    wrong = []
    for module, targets in import_graph().items():
        if not module.startswith("cappy.model."):
            continue
        here = MODEL_LAYERS.index(module.split(".")[2])
        for t in targets:
            if t == "cappy.model" or (t.startswith("cappy.model.") and MODEL_LAYERS.index(t.split(".")[2]) >= here):
                wrong.append(f"{module} imports {t}")
    assert not wrong, "\n".join(wrong)


def test_every_public_model_name_is_exported():
    import cappy.model

    for name in cappy.model.__all__:
        assert getattr(cappy.model, name) is not None
    assert sorted(cappy.model.__all__) == sorted(cappy.model._WHERE)
