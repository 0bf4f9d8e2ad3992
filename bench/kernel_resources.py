"""Ahead-of-time compile of every shipped Triton kernel for sm_80 and sm_90, without a GPU.

Each op module `spectralar_kernels.<op>.triton` exposes `aot_specs() -> list[AOTSpec]`, one per launch
configuration its launchers can choose. Every spec is compiled with
    triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", arch, 32), options)
(ptxas runs, so what real GPUs reject fails here), then the cubin is read with the cuobjdump that
ships inside the triton wheel: registers, stack/local bytes (spills), static shared memory, and
whether the SASS holds tensor-core instructions (HMMA on sm_80, HGMMA/HMMA on sm_90). Dynamic shared
memory comes from the compiled kernel's metadata.

Under TRITON_INTERPRET=1 (how the tests run without a GPU) `@triton.jit` builds interpreter objects
that cannot be compiled, so the compile runs in a child process with the interpreter switched off
(`compile_all` does this by itself).

Used by tests/test_aot_compile.py and as a script:
    python bench/kernel_resources.py            # markdown table on stdout, exit 1 on any problem
    python bench/kernel_resources.py --write    # also writes docs/kernel_resources.md
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import hashlib
import importlib
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OPS = ("dct", "subimages", "vq", "attention")
ARCHS = (80, 90)
# Largest shared memory one block may use (opt-in maximum), bytes.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "kernel_resources.md"


@dataclasses.dataclass
class Result:
    op: str
    label: str
    kernel: str
    arch: int
    registers: int = -1
    spill_bytes: int = -1  # STACK + LOCAL from cuobjdump; > 0 means register spills
    shared_bytes: int = -1  # dynamic (metadata.shared) + static (cuobjdump SHARED)
    tensor_cores: bool = False
    expect_tensor_cores: bool = False
    num_warps: int = 4
    num_stages: int = 2
    compile_s: float = 0.0
    error: str = ""

    def problems(self) -> list[str]:
        """Why this compiled kernel would fail on a real GPU (empty when it is fine)."""
        if self.error:
            return [f"compile failed: {self.error}"]
        out = []
        if self.spill_bytes > 0:
            out.append(f"spills {self.spill_bytes} bytes to local memory ({self.registers} registers)")
        if self.shared_bytes > SHARED_LIMIT[self.arch]:
            out.append(f"shared memory {self.shared_bytes} B > {SHARED_LIMIT[self.arch]} B on sm_{self.arch}")
        if self.expect_tensor_cores and not self.tensor_cores:
            out.append("expected tensor-core instructions (HMMA/HGMMA) in the SASS, found none")
        return out


def tool(name: str) -> str:
    """Path of a CUDA binary bundled with the triton wheel (cuobjdump, nvdisasm, ptxas)."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: this triton wheel does not bundle {name}")
    return str(path)


def collect_specs(ops=OPS) -> dict[str, list | str]:
    """op -> its list of AOTSpec, or a string saying why there is none (module not written yet)."""
    found: dict[str, list | str] = {}
    for op in ops:
        name = f"spectralar_kernels.{op}.triton"
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            # Only a missing op module counts as "not written yet"; anything else is a real failure.
            if e.name not in (name, f"spectralar_kernels.{op}"):
                raise
            found[op] = f"{name} does not exist yet"
            continue
        if not hasattr(module, "aot_specs"):
            found[op] = f"{name} has no aot_specs()"
            continue
        found[op] = list(module.aot_specs())
    return found


_RESOURCE_RE = re.compile(r"Function\s+(\S+):\s*\n\s*REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
_TC_RE = re.compile(r"\b(HMMA|HGMMA)\b")


def parse_resource_usage(text: str, kernel: str) -> tuple[int, int, int]:
    """(registers, stack + local bytes, static shared bytes) of `kernel` in cuobjdump output."""
    for m in _RESOURCE_RE.finditer(text):
        if m.group(1) == kernel:
            reg, stack, shared, local = (int(g) for g in m.groups()[1:])
            return reg, stack + local, shared
    raise ValueError(f"no resource usage for {kernel} in cuobjdump output:\n{text}")


def has_tensor_core_ops(sass: str) -> bool:
    return _TC_RE.search(sass) is not None


def cubin_resources(cubin: bytes, kernel: str) -> tuple[int, int, int, bool]:
    """(registers, spill bytes, static shared bytes, tensor cores) of `kernel` in a cubin.

    Disassembling takes ~1 s per kernel, so results are kept on disk keyed by the cubin's sha256
    (SPECTRALAR_AOT_CACHE, default ~/.cache/spectralar/kernel_resources); a cubin never changes meaning.
    """
    key = hashlib.sha256(cubin + kernel.encode()).hexdigest()
    cache = Path(os.environ.get("SPECTRALAR_AOT_CACHE", Path.home() / ".cache" / "spectralar" / "kernel_resources"))
    entry = cache / f"{key}.json"
    if entry.exists():
        try:
            return tuple(json.loads(entry.read_text()))
        except (OSError, ValueError):
            pass  # a torn write from a concurrent run: recompute
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{kernel}.cubin"
        path.write_bytes(cubin)
        usage = subprocess.run([tool("cuobjdump"), "--dump-resource-usage", str(path)],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
        sass = subprocess.run([tool("cuobjdump"), "-sass", str(path)],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
    found = (*parse_resource_usage(usage, kernel), has_tensor_core_ops(sass))
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp_entry = entry.with_suffix(f".{os.getpid()}.tmp")
        tmp_entry.write_text(json.dumps(found))
        tmp_entry.replace(entry)  # atomic: concurrent runs never read half a file
    except OSError:
        pass  # read-only home: just no cache
    return found


def compile_spec(op: str, spec, arch: int) -> Result:
    """Compile one AOTSpec for sm_<arch> and read its resources. Needs a real JITFunction (no interpreter)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name = getattr(spec.kernel, "__name__", str(spec.kernel))
    res = Result(op=op, label=spec.label or name, kernel=name, arch=arch,
                 expect_tensor_cores=spec.expect_tensor_cores,
                 num_warps=spec.num_warps, num_stages=spec.num_stages)  # fmt: skip
    t0 = time.perf_counter()
    try:
        compiled = triton.compile(
            ASTSource(spec.kernel, spec.signature, spec.constexprs),
            target=GPUTarget("cuda", arch, 32),
            options={"num_warps": spec.num_warps, "num_stages": spec.num_stages},
        )
    except Exception as e:  # a compile error is a result to report, not a crash of the whole check
        res.error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"[:300]
        res.compile_s = time.perf_counter() - t0
        return res
    res.compile_s = time.perf_counter() - t0
    res.registers, res.spill_bytes, static_shared, res.tensor_cores = cubin_resources(
        compiled.asm["cubin"], compiled.metadata.name
    )
    res.shared_bytes = int(compiled.metadata.shared) + static_shared
    return res


@functools.cache
def _specs_of(op: str) -> list:
    specs = collect_specs((op,))[op]
    assert not isinstance(specs, str), specs
    return specs


def _compile_job(job: tuple[str, int, int]) -> Result:
    op, i, arch = job
    return compile_spec(op, _specs_of(op)[i], arch)


def _compile_here(ops, archs, jobs: int) -> tuple[list[Result], dict[str, str]]:
    todo, missing = [], {}
    for op, specs in collect_specs(ops).items():
        if isinstance(specs, str):
            missing[op] = specs
            continue
        todo += [(op, i, arch) for i in range(len(specs)) for arch in archs]
    if jobs <= 1 or len(todo) <= 1:
        return [_compile_job(job) for job in todo], missing
    # fork: workers inherit the imported op modules (JITFunctions do not pickle); nothing has been
    # compiled in this process yet, so no compiler state is forked mid-flight.
    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        return list(pool.map(_compile_job, todo)), missing


def default_jobs() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def compile_all(ops=OPS, archs=ARCHS, jobs: int | None = None) -> tuple[list[Result], dict[str, str]]:
    """Compile every spec of every op for every arch: (results, {op: why it has no specs}).

    Runs in a child process with TRITON_INTERPRET unset when this process has the interpreter on.
    Compiled kernels also land in triton's on-disk cache, so a second run takes seconds.
    """
    import triton.knobs

    jobs = default_jobs() if jobs is None else jobs
    if not triton.knobs.runtime.interpret:
        return _compile_here(ops, archs, jobs)
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # find spectralar_kernels as we do
    cmd = [sys.executable, __file__, "--json", "--jobs", str(jobs), "--ops", *ops, "--arch", *map(str, archs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"AOT compile child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    data = json.loads(proc.stdout)
    return [Result(**r) for r in data["results"]], data["missing"]


def markdown(results: list[Result], missing: dict[str, str]) -> str:
    lines = [
        "| kernel | config | arch | registers | spills (B) | shared (B) | tensor cores "
        "| compile s (0 = cached) | problems |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        tc = ("yes" if r.tensor_cores else "no") + (" (expected)" if r.expect_tensor_cores else "")
        lines.append(
            f"| {r.kernel} | {r.label} (warps={r.num_warps}, stages={r.num_stages}) | sm_{r.arch} | {r.registers} "
            f"| {r.spill_bytes} | {r.shared_bytes} | {tc} | {r.compile_s:.1f} | {'; '.join(r.problems()) or '-'} |"
        )
    for op, why in missing.items():
        lines.append(f"| - | {op}: {why} | - | - | - | - | - | - | not checked |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", nargs="+", default=list(OPS), help="op folders to check (default: all)")
    parser.add_argument("--arch", nargs="+", type=int, default=list(ARCHS), help="SM versions (default: 80 90)")
    parser.add_argument("--write", action="store_true", help=f"also write {DOC_PATH}")
    parser.add_argument("--json", action="store_true", help="print results as JSON (used by the test)")
    parser.add_argument("--jobs", type=int, default=default_jobs(), help="parallel compile processes")
    args = parser.parse_args(argv)
    results, missing = compile_all(args.ops, args.arch, args.jobs)
    bad = any(r.problems() for r in results)
    if args.json:
        print(json.dumps({"results": [dataclasses.asdict(r) for r in results], "missing": missing}))
        return int(bad)
    table = markdown(results, missing)
    print(table)
    if args.write:
        import triton

        header = (
            "# Kernel resources (ahead-of-time compile, no GPU)\n\n"
            f"Generated by `python bench/kernel_resources.py --write` with triton {triton.__version__}. "
            "Registers / spills / static shared memory from the wheel's `cuobjdump --dump-resource-usage`, "
            "dynamic shared memory from the compiled metadata, tensor cores = HMMA/HGMMA in `cuobjdump -sass`. "
            f"Limits: shared <= {SHARED_LIMIT[80]} B (sm_80), {SHARED_LIMIT[90]} B (sm_90); no spills.\n\n"
        )
        DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
        DOC_PATH.write_text(header + table, encoding="utf-8")
    return int(bad)


if __name__ == "__main__":
    sys.exit(main())
