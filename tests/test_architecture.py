"""House rules for the source tree: no import cycles, command lines that nobody imports, files a maintainer can
read in one sitting, and a project that never points outside itself."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"spectralar": ROOT / "spectralar", "spectralar_kernels": ROOT / "kernels" / "src" / "spectralar_kernels"}
CLI_MODULES = {f"spectralar.{m}" for m in ("generate", "train", "evaluate", "experiments", "reconstruct", "export")}
MAX_LINES = 600
SKIP_DIRS = {"build", "dist", "runs", "out", "__pycache__"}


def project_files(suffixes) -> list[Path]:
    """Every file of the project with one of `suffixes`, without build outputs, caches and hidden folders."""
    out = []
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT).parts
        if any(p.startswith(".") or p in SKIP_DIRS or p.endswith(".egg-info") for p in rel[:-1]):
            continue
        if path.is_file() and path.suffix in suffixes:
            out.append(path)
    return sorted(out)


def module_table() -> dict[str, Path]:
    """Dotted module name -> source file, for both import packages."""
    table = {}
    for pkg, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("").parts
            if any(p in SKIP_DIRS for p in rel):
                continue
            parts = rel[:-1] if rel[-1] == "__init__" else rel
            table[".".join((pkg, *parts))] = path
    return table


def imports_of(name: str, path: Path, table: dict[str, Path]) -> set[str]:
    """Project modules `name` imports anywhere in its file (top level or inside functions: lazy imports count)."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import x` imports the submodule pkg.x when there is one, else a name of pkg.
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in table else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in table:  # `import a.b.c` of a project module: its longest known prefix
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph() -> dict[str, set[str]]:
    table = module_table()
    return {name: imports_of(name, path, table) for name, path in table.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_graph_sees_relative_lazy_and_submodule_imports(tmp_path):
    """The walker must catch each spelling, or the rules below could pass vacuously."""
    src = tmp_path / "m.py"
    src.write_text(
        "from . import sibling\n"
        "from .. import config\n"
        "from ..kernels_like import thing\n"
        "def f():\n"
        "    from .lazy import x\n"
        "    import spectralar.generate\n"
    )
    table = {n: Path() for n in ("spectralar.sub.sibling", "spectralar.config", "spectralar.sub.lazy",
                                 "spectralar.generate", "spectralar.sub", "spectralar")}  # fmt: skip
    found = imports_of("spectralar.sub.m", src, table)
    assert found == {"spectralar.sub.sibling", "spectralar.config", "spectralar", "spectralar.sub.lazy",
                     "spectralar.generate"}  # fmt: skip
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 30, sorted(graph)
    found = cycles(graph)
    assert not found, "import cycles (lazy imports included):\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_module_imports_a_command_line():
    graph = import_graph()
    offenders = [f"{mod} imports {cli}" for mod, deps in sorted(graph.items()) for cli in sorted(deps & CLI_MODULES)]
    assert not offenders, "command-line modules are entry points only:\n" + "\n".join(offenders)


@pytest.mark.parametrize("path", project_files({".py"}), ids=lambda p: str(p.relative_to(ROOT)))
def test_python_files_stay_readable(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines (> {MAX_LINES}): split it"


OUTSIDE = re.compile(r"\.\./shared|\bshared/[A-Z][A-Z-]*\.md|/work/|\b(?:CALIBRATION|GPU-PERF|STYLE)\.md\b")


def test_project_never_points_outside_itself():
    texts = project_files({".py", ".md", ".toml", ".cfg", ".ini", ".yaml", ".yml", ".txt"}) + [ROOT / ".ci" / "run"]
    assert len(texts) > 40
    hits = []
    for path in texts:
        if path == Path(__file__).resolve():
            continue  # the pattern itself
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    assert not hits, "references to files outside the repository:\n" + "\n".join(hits)
