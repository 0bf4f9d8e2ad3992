"""House rules for the source tree: no import cycles, layers that import only downwards (kernels know nothing of
spectralar, models nothing of training or evaluation), command lines that nobody imports, files a maintainer can
read in one sitting, and a project that never points outside itself."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"spectralar": ROOT / "spectralar", "spectralar_kernels": ROOT / "kernels" / "src" / "spectralar_kernels"}
CLI_MODULES = {f"spectralar.{m}" for m in ("generate", "train", "evaluate", "experiments", "reconstruct", "export",
                                           "vary", "anytime", "demo")}
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


def imports_of(name: str, path: Path, table: dict[str, Path], tree: ast.AST | None = None) -> set[str]:
    """Project modules `name` imports anywhere in its file (top level or inside functions: lazy imports count);
    `tree`: only the import statements of that part of the file."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    if tree is None:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
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


# One row per layering rule: modules under the first prefix import nothing under the second (lazy imports count).
LAYER_RULES = [
    ("spectralar_kernels", "spectralar"),
    ("spectralar.models", "spectralar.training"),
    ("spectralar.models", "spectralar.evaluation"),
]


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_layers_import_only_downwards():
    graph = import_graph()
    for importer, _ in LAYER_RULES:
        assert any(_under(m, importer) for m in graph), importer  # a rule about modules that exist
    offenders = [f"{mod} imports {dep}" for importer, banned in LAYER_RULES for mod, deps in sorted(graph.items())
                 if _under(mod, importer) for dep in sorted(deps) if _under(dep, banned)]
    assert not offenders, "imports against the layering:\n" + "\n".join(offenders)


def test_layer_rules_see_a_violation():
    """The rule above would catch a model importing the trainer."""
    graph = {"spectralar.models.tokenizer": {"spectralar.training.loop"}, "spectralar.training.loop": set()}
    assert [(m, d) for i, b in LAYER_RULES for m, deps in graph.items() if _under(m, i) for d in deps
            if _under(d, b)] == [("spectralar.models.tokenizer", "spectralar.training.loop")]


def test_no_module_imports_a_command_line():
    graph = import_graph()
    offenders = [f"{mod} imports {cli}" for mod, deps in sorted(graph.items()) for cli in sorted(deps & CLI_MODULES)]
    assert not offenders, "command-line modules are entry points only:\n" + "\n".join(offenders)


ABOVE_MODELS = ("spectralar.training", "spectralar.evaluation", "spectralar.sampling")
# The one way up: the model keeps `generate` as a convenience that hands the call to the sampler, importing it when
# called (so importing the models never imports the sampler).
DELEGATES = {("spectralar.models.generator", "SpectralGPT.generate", "spectralar.sampling")}


def imports_by_function(name: str, path: Path, table: dict[str, Path]) -> set[tuple[str, str]]:
    """(project module imported, qualified name of the function importing it, "" at module level) for `name`."""
    out = set()

    def visit(node, where):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, f"{where}.{child.name}" if where else child.name)
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                fake = ast.Module(body=[child], type_ignores=[])
                for target in imports_of(name, path, table, tree=fake):
                    out.add((target, where))
            else:
                visit(child, where)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), "")
    return out


def test_models_import_nothing_from_training_evaluation_or_sampling():
    """Models sit below the sampler, the trainer and the evaluation: they import none of them (lazy imports
    included), except the delegates listed in DELEGATES, each from its one function."""
    table = module_table()
    found = set()
    for name, path in table.items():
        if name.startswith("spectralar.models"):
            for target, where in imports_by_function(name, path, table):
                if target.startswith(ABOVE_MODELS):
                    found.add((name, where, target))
    offenders = sorted(f"{m} ({w or 'module level'}) imports {t}" for m, w, t in found - DELEGATES)
    assert not offenders, "models import from above them:\n" + "\n".join(offenders)
    assert found == DELEGATES, f"a listed delegate is gone or moved: {sorted(DELEGATES - found)}"


def test_model_rule_sees_lazy_imports(tmp_path):
    """The walker behind the model rule must see an import inside a method, or the rule could pass vacuously."""
    src = tmp_path / "m.py"
    src.write_text("import torch\nclass A:\n    def f(self):\n        from ..sampling import generate\n")
    table = {n: Path() for n in ("spectralar.sampling", "spectralar.models", "spectralar.models.m")}
    assert imports_by_function("spectralar.models.m", src, table) == {("spectralar.sampling", "A.f")}


@pytest.mark.parametrize("path", project_files({".py"}), ids=lambda p: str(p.relative_to(ROOT)))
def test_python_files_stay_readable(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines (> {MAX_LINES}): split it"


DOC_NAME = re.compile(r"(?<![\w./-])([\w./-]*\w\.md)\b")  # a document named in Markdown
CAPS_DOC = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[A-Z][A-Z0-9_-]*\.md)\b")  # README.md-style names in other files
LINK = re.compile(r"\]\(([^)#\s]+)")
# Where this checkout happens to live (its ancestor folders, system ones aside) is no business of the project's.
_ANCESTORS = [str(p) for p in ROOT.parents if str(p) not in ("/", "/tmp", "/home", "/root", "/usr", "/opt", "/var")]
CHECKOUT = re.compile("|".join(rf"(?<![\w./-]){re.escape(a)}(?=/)" for a in _ANCESTORS)) if _ANCESTORS else None
UP = re.compile(r"(?<![\w.])((?:\.\./)+[\w.-]+(?:/[\w.-]+)*)")


def outside_references(path: Path, text: str, documents: set[str]) -> list[str]:
    """What `text` (the file `path`) points to outside the repository: documents that are not the project's
    (a Markdown file may name any .md, other files README.md-style ones), Markdown links to paths that do not
    exist here, ../ paths that climb out of the repository, and the folders this checkout lives in."""
    hits = []
    names = DOC_NAME if path.suffix == ".md" else CAPS_DOC
    for i, line in enumerate(text.splitlines(), start=1):
        plain = re.sub(r"\w+://\S+", "", line)  # web addresses name no file here
        found = [m.group(1) for m in names.finditer(plain) if Path(m.group(1)).name not in documents]
        if path.suffix == ".md":
            for target in LINK.findall(line):
                resolved = (path.parent / target).resolve()
                if "://" not in target and not target.startswith("mailto:") and (
                        not resolved.exists() or ROOT not in resolved.parents):
                    found.append(target)
        found += [m.group(0) for m in CHECKOUT.finditer(plain)] if CHECKOUT else []
        for target in UP.findall(line):
            if ROOT not in (path.parent / target).resolve().parents:
                found.append(target)
        hits += [f"{path.relative_to(ROOT)}:{i}: {t}" for t in found]
    return hits


def test_outside_references_are_caught(tmp_path):
    """The rule names nothing outside the project itself; it would catch each kind of reference."""
    docs = {"README.md", "training.md"}
    md = ROOT / "docs" / "x.md"
    text = ("see [training](training.md), NOTES.md and [gone](missing.md) or ../../elsewhere/f.txt\n"
            "and [site](https://example.org/a.md)")
    assert [h.split(": ", 1)[1] for h in outside_references(md, text, docs)] == [
        "NOTES.md", "missing.md", "missing.md", "../../elsewhere/f.txt"]
    py = ROOT / "spectralar" / "x.py"
    assert [h.split(": ", 1)[1] for h in outside_references(py, "# see PRIVATE-NOTES.md; writes report.md", docs)] == [
        "PRIVATE-NOTES.md"]
    if _ANCESTORS:  # a checkout under a folder of its own (not /tmp)
        assert outside_references(py, f"# {_ANCESTORS[-1]}/notes/plan.txt", docs)


def test_project_never_points_outside_itself():
    texts = project_files({".py", ".md", ".toml", ".cfg", ".ini", ".yaml", ".yml", ".txt"}) + [ROOT / ".ci" / "run"]
    assert len(texts) > 40
    documents = {p.name for p in project_files({".md"})}
    hits = [h for path in texts if path != Path(__file__).resolve()  # its own examples of what is caught
            for h in outside_references(path, path.read_text(encoding="utf-8"), documents)]
    assert not hits, "references to files outside the repository:\n" + "\n".join(hits)
