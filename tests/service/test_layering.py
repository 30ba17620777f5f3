"""The shape of the code, checked from its imports (those inside functions included): layers import downwards
only, rag/ has no import cycle, the runtime package leaves the benchmarks to the `bench` command, and no module
of rag/ reads another object's underscore attribute."""
import ast
import re

from tests.helpers import ROOT

PACKAGES = {"kernels": "kernels", "engine": "engine", "rag": "rag", "benchmarks": "benchmarks"}
ALLOWED = {"kernels": {"kernels"}, "engine": {"engine", "kernels"}, "rag": {"rag", "engine", "kernels"},
           "benchmarks": {"benchmarks", "rag", "engine", "kernels"}}


def modules():
    for package, folder in PACKAGES.items():
        for path in (ROOT / folder).glob("*.py"):
            if "proto_gen" not in path.parts:
                yield package, path.stem, path


def imports(package: str, path) -> set[tuple[str, str]]:
    """(package, module) pairs imported by the file, relative imports resolved."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = (package, node.module.split(".")[0]) if node.module else None
                found |= {base} if base else {(package, a.name) for a in node.names}
            elif node.module and node.module.startswith("cascade_rag."):
                parts = node.module.split(".")
                found.add((parts[1], parts[2] if len(parts) > 2 else node.names[0].name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "cascade_rag" and len(parts) > 2:
                    found.add((parts[1], parts[2]))
    return found


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph (module -> modules it imports), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None
    return next((found for node in sorted(graph) if node not in state and (found := visit(node, [node]))), None)


def test_the_cycle_finder_finds_cycles():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_layers_import_downwards_and_rag_has_no_cycle():
    rag: dict[str, set[str]] = {}
    for package, name, path in modules():
        for target in imports(package, path):
            bench_command = (package, name, target[0]) == ("rag", "cli", "benchmarks")  # `cascade-rag bench`
            assert bench_command or target[0] in ALLOWED[package], \
                f"{package}/{name}.py imports {target[0]}.{target[1]}"
            if package == target[0] == "rag":
                rag.setdefault(name, set()).add(target[1])
    assert cycle(rag) is None


def test_no_module_of_rag_reads_another_objects_underscore_attribute():
    pattern = re.compile(r"\b(?!self\b|cls\b)[a-z_][a-z0-9_]*\._[a-z][a-z0-9_]*\b")
    for path in (ROOT / "rag").glob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            hits = [h for h in pattern.findall(code) if not h.startswith(("os._exit", "sys._"))]
            assert not hits, f"{path.name}:{n}: {line.strip()}"
