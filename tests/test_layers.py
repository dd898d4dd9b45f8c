"""The package's layers: each sub-package of cud_core imports only the ones below it, the pages and the
app only the pipeline, the reports and the store (plus a few names listed here), and project imports sit
at the top of each file."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# lower rank = lower layer; a module may import its own package and packages of a lower rank
RANK = {"data": 0, "engine": 1, "store": 2, "unlearn": 3, "difficulty": 3, "pipeline": 4, "report": 5, "cli": 6}
# what the pages (views/, app.py) may import: the pipeline and reports, the store read-only, and these
# names from lower layers (types and constants a page shows or passes back to the pipeline, and the
# model loader whose result the pages cache and hand to the pipeline)
VIEW_PACKAGES = {"pipeline", "report", "store", "data"}
VIEW_NAMES = {
    ("cud_core.engine.graph", "Graph"),                    # the circuit graph type the pipeline takes back
    ("cud_core.engine.models", "EMBEDDED"),                # the default model spec
    ("cud_core.engine.models", "EMBEDDED_NAME"),           # and the name its runs are stored under
    ("cud_core.engine.models", "ModelLoadError"),          # the error shown when a model cannot be loaded
    ("cud_core.engine.models", "cache_dir"),               # an allowed root for model folders
    ("cud_core.engine.models", "load_model"),              # the model the pages cache for their jobs
    ("cud_core.engine.attribution", "METHODS"),            # the choices of the score form
    ("cud_core.engine.attribution", "BASELINES"),
    ("cud_core.engine.attribution", "METRICS"),
    ("cud_core.engine.circuits", "FAITHFULNESS_SIZES"),    # the circuit sizes the faithfulness button names
    ("cud_core.difficulty.analysis", "TARGETS"),           # the validation targets to choose from
    ("cud_core.difficulty.circuit_diff", "NODE_TYPES"),    # the rows of the attribution-change heat map
    ("cud_core.unlearn", "METHODS"),                       # the unlearning methods to choose from
    ("cud_core.unlearn.runner", "DEFAULT_LR"),             # the unlearning form's default learning rate
}
# project imports allowed inside a function: (file, imported module); none today
LAZY_ALLOWED: set[tuple[str, str]] = set()


def sources(*patterns):
    return sorted(p for pattern in patterns for p in ROOT.glob(pattern) if ".venv" not in p.parts)


def package_of(path: Path) -> str:
    parts = path.relative_to(ROOT / "cud_core").parts
    return parts[0] if len(parts) > 1 else ""


def project_imports(tree):
    """(module, names, at top level?) for every import of cud_core, resolved to absolute module names."""
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cud_core"):
            assert node.level == 0, "relative imports of the project are written absolute"
            yield node.module, [a.name for a in node.names], id(node) in top, node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("cud_core"):
                    yield a.name, [], id(node) in top, node.lineno


def imported_package(module: str, names: list[str]) -> list[str]:
    parts = module.split(".")
    if len(parts) > 1:
        return [parts[1]]
    return names  # `from cud_core import engine`


@pytest.mark.parametrize("path", sources("cud_core/**/*.py"), ids=lambda p: str(p.relative_to(ROOT)))
def test_engine_layers_import_downwards_only(path):
    own = package_of(path)
    tree = ast.parse(path.read_text())
    for module, names, _, line in project_imports(tree):
        for pkg in imported_package(module, names):
            if pkg == own or own == "":
                continue
            assert pkg in RANK and own in RANK and RANK[pkg] < RANK[own], \
                f"{path.relative_to(ROOT)}:{line} imports {module} ({pkg}), not a layer below {own}"


@pytest.mark.parametrize("path", sources("views/**/*.py", "app.py"), ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_use_the_pipeline_reports_and_store(path):
    tree = ast.parse(path.read_text())
    for module, names, _, line in project_imports(tree):
        pkg = imported_package(module, names)[0]
        if pkg in VIEW_PACKAGES:
            continue
        extra = [n for n in names if (module, n) not in VIEW_NAMES]
        assert not extra and names, f"{path.relative_to(ROOT)}:{line} imports {extra or module} from {pkg}"


@pytest.mark.parametrize("path", sources("cud_core/**/*.py", "views/**/*.py", "app.py", "bench/*.py"),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_project_imports_are_at_the_top(path):
    tree = ast.parse(path.read_text())
    rel = str(path.relative_to(ROOT))
    for module, _, top, line in project_imports(tree):
        assert top or (rel, module) in LAZY_ALLOWED, f"{rel}:{line} imports {module} inside a function"


def test_no_package_cycle():
    """The package graph is acyclic (implied by the ranks; checked directly so a rank table edit cannot
    hide a cycle)."""
    edges = {}
    for path in sources("cud_core/**/*.py"):
        own = package_of(path)
        for module, names, _, _ in project_imports(ast.parse(path.read_text())):
            for pkg in imported_package(module, names):
                if own and pkg != own:
                    edges.setdefault(own, set()).add(pkg)
    seen, stack = set(), set()

    def visit(p):
        assert p not in stack, f"package cycle through {p}: {sorted(stack)}"
        if p in seen:
            return
        stack.add(p)
        for q in edges.get(p, ()):
            visit(q)
        stack.discard(p)
        seen.add(p)

    for p in list(edges):
        visit(p)


def test_the_check_catches_an_upward_and_a_lazy_import(tmp_path):
    """The checks above are not vacuous: an engine module importing the pipeline, and a function-level
    project import, are both found."""
    tree = ast.parse("from cud_core.pipeline.jobs import Job\n\n"
                     "def f():\n    from cud_core.data.samples import Sample\n")
    found = list(project_imports(tree))
    assert [(m, top) for m, _, top, _ in found] == [("cud_core.pipeline.jobs", True), ("cud_core.data.samples", False)]
    assert RANK[imported_package(found[0][0], found[0][1])[0]] > RANK["engine"]


def test_no_module_cycle():
    """No two modules of cud_core import each other, directly or through others (top-level imports)."""
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in sources("cud_core/**/*.py")}

    def owner(name):
        parts = name.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        return ".".join(parts)

    edges = {m: {o for module, names, top, _ in project_imports(ast.parse(p.read_text())) if top
                 for o in ([owner(module + "." + n) for n in names] or [owner(module)]) if o and o != m}
             for m, p in modules.items()}
    done, path = set(), []

    def visit(m):
        assert m not in path, f"import cycle: {' -> '.join(path[path.index(m):] + [m])}"
        if m in done:
            return
        path.append(m)
        for n in edges[m]:
            visit(n)
        path.pop()
        done.add(m)

    for m in modules:
        visit(m)
