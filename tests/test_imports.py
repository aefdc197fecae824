"""The package's import graph has no cycles (lazy imports inside functions included), config.py is a leaf, and every
import points down the layers of docs/architecture.md."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "calm_study"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the calm_study modules it imports anywhere in its source (TYPE_CHECKING blocks included)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in targets:
                while target and target not in files:  # `import calm_study.x.y as z` -> calm_study.x.y
                    target = target.rpartition(".")[0]
                if target.startswith("calm_study") and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_inside_calm_study():
    graph = import_graph()
    assert len(graph) > 40 and "calm_study.study.spec" in graph["calm_study.study.ray_runner"]
    assert cycles(graph) == []


def test_config_is_a_leaf():
    graph = import_graph()
    assert graph["calm_study.config"] <= {"calm_study.configio"}
    assert graph["calm_study.names"] == set()


def layers() -> list[tuple[str, list[str]]]:
    """(layer, its files and folders relative to calm_study/) from the table under "## Layers" in
    docs/architecture.md, bottom layer first (the table lists them from the top down)."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]  # past the header and |---|
    table = []
    for row in rows:
        name, modules = (cell.strip() for cell in row.strip("|").split("|")[:2])
        paths = re.findall(r"`([^`]+)`", modules)
        assert paths and re.sub(r"`[^`]+`|[,\s]", "", modules) == "", f"layer {name!r}: {modules!r} is not a list of " \
            "`file.py` / `folder/` names"
        table.append((name, paths))
    return table[::-1]


def layer_of() -> dict[str, int]:
    """calm_study module -> its layer's height (0: the bottom layer), from docs/architecture.md."""
    modules = list(import_graph())
    height: dict[str, int] = {}
    for level, (name, paths) in enumerate(layers()):
        for path in paths:
            assert (PACKAGE / path).exists(), f"docs/architecture.md layer {name!r} names {path}, which does not exist"
            folder = path.endswith("/")
            prefix = "calm_study." + path.strip("/").replace("/", ".") if folder else module_name(PACKAGE / path)
            for m in modules:
                if m == prefix or (folder and m.startswith(prefix + ".")):
                    assert m not in height, f"{m} is in two layers of docs/architecture.md"
                    height[m] = level
    return height


def test_the_layer_table_is_read():
    table = layers()
    assert table[0][0] == "leaves" and "config.py" in table[0][1] and table[-1][0] == "command line"
    assert layer_of()["calm_study.data.readers.msrvtt"] == [n for n, _ in table].index("data")


def test_every_module_belongs_to_a_layer():
    height = layer_of()
    missing = sorted(set(import_graph()) - set(height))
    assert not missing, f"modules that no layer of docs/architecture.md names: {missing}"


def test_every_import_points_down_the_layers():
    """An import from a module to one in its own layer or a lower one (docs/architecture.md, "## Layers")."""
    height, names = layer_of(), [n for n, _ in layers()]
    upward = [f"{a} ({names[height[a]]}) imports {b} ({names[height[b]]})"
              for a, targets in sorted(import_graph().items()) for b in sorted(targets) if height[b] > height[a]]
    assert not upward, "imports that point up the layers of docs/architecture.md:\n" + "\n".join(upward)


def test_data_imports_no_model():
    """data/ reads videos without models/ (the open_clip facts it needs come from clip_archs.py)."""
    graph = import_graph()
    assert not {(a, b) for a, targets in graph.items() if a.startswith("calm_study.data")
                for b in targets if b.startswith("calm_study.models")}
