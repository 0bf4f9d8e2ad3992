"""Package-level rules: one-way dependencies, the pinned public API, import without triton."""

import ast
import importlib
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import spectralar_kernels

KERNELS_PROJECT = Path(__file__).resolve().parent.parent / "kernels"  # its own pyproject (pip install ./kernels)
KERNELS_DIR = KERNELS_PROJECT / "src" / "spectralar_kernels"  # the import package
PUBLIC_API = [
    "LinearDCT",
    "attention",
    "attention_with_kvcache",
    "dct",
    "dct2d",
    "dctn",
    "flash_attn_func",
    "flash_attn_with_kvcache",
    "idct",
    "idct2d",
    "idctn",
    "scaled_dot_product_attention",
    "spectral_subimages",
    "spectral_windows",
    "use_backend",
    "vq_nearest",
]


def imported_modules(path: Path) -> list[str]:
    """Every absolute module name imported by a source file (relative imports are inside kernels/)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            names += [a.value for a in node.args[:1] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return names


def test_kernels_never_import_the_model_package():
    sources = sorted(KERNELS_DIR.rglob("*.py"))
    assert len(sources) >= 10, f"expected the kernel sources under {KERNELS_DIR}, found {sources}"
    offenders = [
        f"{path.relative_to(KERNELS_DIR)}: {name}"
        for path in sources
        for name in imported_modules(path)
        if name == "spectralar" or name.startswith("spectralar.")
    ]
    assert not offenders, "kernels/ must not import spectralar:\n" + "\n".join(offenders)


def test_import_walker_sees_every_form(tmp_path):
    """The walker itself must catch each spelling, or the test above could pass vacuously."""
    src = tmp_path / "m.py"
    src.write_text(
        textwrap.dedent(
            """
            import spectralar
            import os, spectralar.config as cfg
            from spectralar.tokenizer import SpectralTokenizer
            from . import sibling
            import importlib
            importlib.import_module("spectralar.generator")
            """
        )
    )
    found = [n for n in imported_modules(src) if n.split(".")[0] == "spectralar"]
    assert found == ["spectralar", "spectralar.config", "spectralar.tokenizer", "spectralar.generator"]


def test_public_api_is_pinned():
    assert spectralar_kernels.__all__ == PUBLIC_API
    for name in PUBLIC_API:
        assert callable(getattr(spectralar_kernels, name)), name


def test_import_and_reference_paths_without_triton():
    """`import spectralar_kernels` must work where triton cannot be imported; the references still run."""
    script = textwrap.dedent(
        """
        import sys

        class BlockTriton:
            def find_spec(self, name, path=None, target=None):
                if name == "triton" or name.startswith("triton."):
                    raise ImportError("triton blocked for this test")
                return None

        sys.meta_path.insert(0, BlockTriton())
        try:
            import triton  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("the blocker did not block triton")

        import torch
        import spectralar_kernels as sk
        import spectralar_kernels.testing.aot  # the tolerance rule and the AOT helper import triton lazily

        assert not any(m == "triton" or m.startswith("triton.") for m in sys.modules), "triton got imported"
        torch.manual_seed(0)
        x = torch.randn(2, 1, 8, 8)
        y = sk.idct2d(sk.dct2d(x))
        assert (y - x).abs().max() < 1e-4
        w = sk.spectral_windows(8, 4, "uniform")
        assert list(w)[-1] == 8
        assert sk.spectral_subimages(x, torch.tensor([w[0], w[-1]])).shape == x.shape
        idx, dist = sk.vq_nearest(torch.randn(5, 12), torch.randn(9, 12))
        assert idx.shape == (5,) and dist.shape == (5,)
        q = torch.randn(1, 6, 2, 16)
        assert sk.attention(q, q, q, causal=True).shape == q.shape
        assert not any(m == "triton" or m.startswith("triton.") for m in sys.modules), "triton got imported"
        print("OK")
        """
    )
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # plain user setup: no interpreter
    env["SPECTRALAR_KERNELS"] = "auto"
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr


def test_kernels_install_alone(tmp_path):
    """`pip install ./kernels` builds a wheel that needs torch only and imports without the model stack."""
    # Build from a copy: setuptools writes build/ and *.egg-info beside the sources.
    skip = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    src = shutil.copytree(KERNELS_PROJECT, tmp_path / "src", ignore=skip)
    pkg = src / "src" / "spectralar_kernels"
    sources = {p.relative_to(pkg).as_posix() for p in pkg.rglob("*.py")}
    wheels = tmp_path / "wheels"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(src), "-w", str(wheels)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = wheels.glob("spectralar_kernels-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        z.extractall(tmp_path / "site")
    assert {n.split("/")[0] for n in names} == {"spectralar_kernels", wheel.name.split("-py3")[0] + ".dist-info"}
    assert sources == {n.removeprefix("spectralar_kernels/") for n in names if n.endswith(".py")}
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert [r for r in requires if "extra ==" not in r] == ["torch>=2.3"], requires
    assert f"Version: {spectralar_kernels.__version__}" in meta

    # Import from the unpacked wheel with everything but torch (and its own needs) blocked.
    script = textwrap.dedent(
        """
        import sys

        BLOCKED = ("spectralar", "matplotlib", "PIL", "safetensors", "tqdm")

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(name + " blocked for this test")
                return None

        sys.meta_path.insert(0, Block())
        import torch
        import spectralar_kernels as sk

        assert sk.__file__.startswith(sys.argv[1]), sk.__file__
        x = torch.randn(2, 1, 8, 8)
        assert (sk.idct2d(sk.dct2d(x)) - x).abs().max() < 1e-4
        print("OK")
        """
    )
    site = str(tmp_path / "site")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([site] + [p for p in sys.path if p]))
    proc = subprocess.run([sys.executable, "-c", script, site], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr


def test_one_version():
    import spectralar

    assert spectralar.__version__ == spectralar_kernels.__version__
    root = KERNELS_PROJECT.parent
    for path in [root / "setup.py", root / "pyproject.toml", KERNELS_PROJECT / "pyproject.toml"]:
        assert spectralar_kernels.__version__ not in path.read_text(encoding="utf-8"), f"{path} repeats the version"
    assert f"## {spectralar_kernels.__version__}" in (root / "CHANGELOG.md").read_text(encoding="utf-8")


def test_no_public_name_shadows_a_subpackage():
    """`import spectralar_kernels.X.Y as m` resolves attributes: a public function named like a subpackage (as
    `dct` and `attention` once were) makes that import fail although the module exists."""
    import pkgutil

    subpackages = {m.name for m in pkgutil.iter_modules(spectralar_kernels.__path__)}
    assert {"attn", "transforms", "vq"} <= subpackages, subpackages
    assert not subpackages & set(spectralar_kernels.__all__), subpackages & set(spectralar_kernels.__all__)
    for sub in sorted(s for s in subpackages if not s.startswith("_")):
        for m in pkgutil.iter_modules(importlib.import_module(f"spectralar_kernels.{sub}").__path__):
            if m.name == "triton" or m.name.startswith("_"):
                continue  # needs triton at import; the `as` form is what matters, checked on the others
            mod = importlib.import_module(f"spectralar_kernels.{sub}.{m.name}")
            assert eval(f"spectralar_kernels.{sub}.{m.name}") is mod  # noqa: S307 - the attribute chain
