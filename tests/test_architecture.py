"""The package's structure, read from its imports with ``ast`` (docs/architecture.md).

Layers read one way: files -> rows (``mmrec.io``) -> data -> features -> networks -> ``mmrec.train`` |
``mmrec.serve``. These tests hold the rules that keep it so: serving never reaches training, no import cycles, no
module reaching into another's private names, modules small enough to have one job.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the installed package maps these top-level folders into the mmrec namespace (pyproject's package-dir)
ROOTS = {"mmrec": REPO / "mmrec", "mmrec.encoders": REPO / "encoders", "mmrec.fusion": REPO / "fusion"}
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    found = {}
    for package, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` for every import in ``module``'s source, function-level
    (lazy) imports included: a lazy import is a dependency all the same."""
    tree = ast.parse(MODULES[module].read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                # `from .data import batch` imports a module; `from .data import Split` a name of one
                out.append((submodule, None, node.lineno) if submodule in MODULES else
                           (target, alias.name, node.lineno))
    return out


def _edges() -> dict[str, set[str]]:
    graph = {}
    for module in MODULES:
        ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        targets = set()
        for target, _, _ in _imports(module):
            # importing a submodule runs its packages' __init__ too, except those already running: the importing
            # module's own ancestors (a package re-exporting its children is not a cycle)
            parts = target.split(".")
            targets |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & MODULES.keys()
        graph[module] = targets - {module} - ancestors
    return graph


GRAPH = _edges()


def _reachable(start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        for target in GRAPH[stack.pop()]:
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def test_the_walker_sees_the_layers():
    # guards the tests below against passing vacuously on a walker that finds nothing
    assert {"mmrec.serve.recommender", "mmrec.train.loop", "mmrec.data.batch", "mmrec.encoders.text"} <= MODULES.keys()
    assert "mmrec.networks.model" in GRAPH["mmrec.train.loop"]
    assert "mmrec.folding" in _reachable("mmrec.serve.recommender")


@pytest.mark.parametrize("serving", sorted(m for m in MODULES if m.startswith("mmrec.serve")))
def test_serving_never_reaches_training(serving):
    reached = sorted(m for m in _reachable(serving) if m == "mmrec.train" or m.startswith("mmrec.train."))
    assert not reached, f"{serving} imports (directly or through others) {reached}"


@pytest.mark.parametrize("lower", ["mmrec.io", "mmrec.data", "mmrec.features", "mmrec.networks", "mmrec.baselines",
                                   "mmrec.store", "mmrec.encoders", "mmrec.fusion", "mmrec.evaluation"])
def test_lower_layers_never_reach_train_serve_report_or_cli(lower):
    modules = [m for m in MODULES if m == lower or m.startswith(lower + ".")]
    upper = ("mmrec.train", "mmrec.serve", "mmrec.report", "mmrec.cli", "mmrec.demo", "mmrec.trained",
             "mmrec.folding", "mmrec.distributed")
    for module in modules:
        reached = sorted(m for m in _reachable(module) if any(m == u or m.startswith(u + ".") for u in upper))
        assert not reached, f"{module} (a lower layer) imports {reached}"


def test_no_import_cycles():
    cycles = [m for m in MODULES if any(m in _reachable(t) for t in GRAPH[m])]
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_no_private_names_imported_across_modules():
    offenders = [f"{MODULES[m].relative_to(REPO)}:{line} imports {name} from {target}"
                 for m in MODULES for target, name, line in _imports(m)
                 if target.startswith("mmrec") and name and name.startswith("_") and name != "__version__"]
    assert not offenders, "\n".join(offenders)


def test_modules_are_small_enough_to_have_one_job():
    long = {str(path.relative_to(REPO)): n for path in MODULES.values()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
