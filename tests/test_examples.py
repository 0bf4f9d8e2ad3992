"""The examples/ scripts run as a user runs them (a subprocess) and their swapped paths match the torch ones.

Each script exits 1 when its strict comparison fails (tokens equal; logits, losses and gradients within the
tolerance it prints), so exit 0 is the check. "auto" on CPU runs the PyTorch references behind the kernels;
"triton" runs the Triton kernels under the interpreter (tiny configs). The last tests perturb a kernel inside the
script's process and expect exit 1: the comparisons can fail.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
GPT_MICRO = ["--micro", "--batch", "2", "--repeats", "1"]
VQ_TINY = ["--batch", "2", "--size", "4", "--codes", "64", "--repeats", "1"]
DCT_TINY = ["--batch", "2", "--size", "16", "--repeats", "1"]


def run(script: str, args: list[str], backend: str = "auto", patch: str = "") -> subprocess.CompletedProcess:
    """`python examples/<script> <args>` on CPU; `patch` (Python run after importing spectralar_kernels as sk)
    replaces a kernel inside the script's process first."""
    env = {**os.environ, "SPECTRALAR_KERNELS": backend, "TRITON_INTERPRET": "1" if backend == "triton" else "0"}
    argv = [str(EXAMPLES / script), *args, "--device", "cpu"]
    if patch:
        code = (f"import runpy, sys\nimport spectralar_kernels as sk\n{patch}\n"
                f"sys.argv = {argv!r}\nsys.path.insert(0, {str(EXAMPLES)!r})  # as `python examples/<script>` does\n"
                "runpy.run_path(sys.argv[0], run_name='__main__')")  # fmt: skip
        argv = ["-c", code]
    return subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_llamagen_style_gpt_identical_tokens(backend):
    r = run("llamagen_style_gpt.py", GPT_MICRO, backend)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "identical tokens" in r.stdout
    assert f"SPECTRALAR_KERNELS={backend}" in r.stdout
    assert "torch SDPA -> spectralar_kernels" in r.stdout and "flash-attn -> spectralar_kernels" in r.stdout


def test_llamagen_swap_is_the_import_line():
    """Each attention form reaches its functions only through `self.ops`: the model text is the same whichever
    module provides them, so in a model file the swap is the import line."""
    import ast

    tree = ast.parse((EXAMPLES / "llamagen_style_gpt.py").read_text())
    names = {"scaled_dot_product_attention", "flash_attn_func", "flash_attn_with_kvcache"}
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    for cls in ("SDPAAttention", "FlashAttention"):
        calls = [n for n in ast.walk(classes[cls]) if isinstance(n, ast.Attribute) and n.attr in names]
        assert calls, cls
        assert all(ast.unparse(n.value) == "self.ops" for n in calls), [ast.unparse(n) for n in calls]


@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_vqvae_quantizer_matches(backend):
    r = run("vqvae_quantizer.py", ["--groups", "2", *VQ_TINY], backend)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "identical indices" in r.stdout


@pytest.mark.parametrize("backend", ["auto", "triton"])
@pytest.mark.parametrize("extra", [[], ["--block", "8", "--norm", "backward", "--channels-last"]])
def test_frequency_loss_matches(backend, extra):
    r = run("frequency_loss.py", [*DCT_TINY, *extra], backend)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: loss and gradient within tolerance" in r.stdout


def _scaled(name: str, factor: float) -> str:
    """A patch multiplying the output of sk.<name> by `factor`."""
    return f"f = sk.{name}\nsk.{name} = lambda *a, **kw: f(*a, **kw) * {factor}"


@pytest.mark.parametrize(
    "script, args, patch",
    [
        ("llamagen_style_gpt.py", GPT_MICRO, _scaled("scaled_dot_product_attention", 1.001)),
        ("llamagen_style_gpt.py", GPT_MICRO, _scaled("flash_attn_func", 1.001)),
        ("llamagen_style_gpt.py", GPT_MICRO, _scaled("flash_attn_with_kvcache", 1.001)),
        ("vqvae_quantizer.py", VQ_TINY,
         "f = sk.vq_nearest\ndef g(z, c, **kw):\n    i, d = f(z, c, **kw)\n    i = i.clone()\n"
         "    i[..., 0] = (i[..., 0] + 1) % c.shape[-2]\n    return i, d\nsk.vq_nearest = g"),
        ("frequency_loss.py", DCT_TINY, _scaled("dct2d", 1.001)),
    ],
    ids=["gpt-sdpa", "gpt-flash-func", "gpt-flash-kvcache", "vq-one-index", "dct-scale"],
)  # fmt: skip
def test_examples_fail_when_the_swap_diverges(script, args, patch):
    r = run(script, args, patch=patch)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "MISMATCH" in r.stderr and "identical" not in r.stdout and "OK:" not in r.stdout
