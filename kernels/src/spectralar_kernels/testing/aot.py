"""Ahead-of-time compile of every shipped Triton kernel for sm_80 and sm_90, without a GPU.

Each kernel module (MODULES, under `spectralar_kernels`) exposes `aot_specs() -> list[AOTSpec]`, one per
launch configuration its launchers can choose on a GPU. Every spec is compiled as the JIT would compile it
for the benchmark shapes:
    triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32), options)
where, from the spec's `values` (its integer arguments at a benchmark shape), integers equal to 1 become
constants and integers divisible by 16 get `tt.divisibility = 16`, and every pointer gets
`tt.divisibility = 16` (16-byte aligned, as fresh torch allocations are). Without those attributes the
compile describes a worst case nobody runs: unaligned scalar loads instead of 128-bit ones, no cp.async.
ptxas runs, so what real GPUs reject fails here. The cubin is then read with the cuobjdump that ships
inside the triton wheel: registers, stack/local bytes (spills), static shared memory, and per-opcode
counts in the SASS: HGMMA (wgmma, sm_90 tensor cores), HMMA (mma.sync), LDGSTS (cp.async), UTMALDG (TMA),
128-bit global loads (LDG.E.128, LDGSTS ... .128) and stores (STG.E.128). Dynamic shared memory comes
from the compiled kernel's metadata.

Design properties checked per record (`Result.problems`, asserted by tests/test_aot_compile.py): it
compiles; no spills; shared memory within the arch's limit; tensor-core instructions where the spec
expects them; and for an op's main-loop kernel (`main=True`): on sm_90, HGMMA for fp16/bf16 in the
ops whose products are GEMM-shaped (HGMMA_OPS), cp.async or TMA loads, 128-bit loads; `wide_stores`:
128-bit stores.

Under TRITON_INTERPRET=1 (how the tests run without a GPU) `@triton.jit` builds interpreter objects
that cannot be compiled, so the compile runs in a child process with the interpreter switched off
(`compile_all` does this by itself).

Used by tests/test_aot_compile.py, by bench/kernel_resources.py (which writes docs/kernel_resources.md),
and as a command (needs triton, no GPU):
    python -m spectralar_kernels.testing.aot                  # markdown table on stdout, exit 1 on any problem
    python -m spectralar_kernels.testing.aot --json out.json  # one JSON record per compiled kernel ("-": stdout)
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

# Kernel modules under spectralar_kernels that define aot_specs().
MODULES = ("transforms.aot", "subimages.aot", "vq.aot", "attn.aot")
RECORD_OPS = ("dct", "blockwise", "subimages", "attention", "decode", "vq")
HGMMA_OPS = ("dct", "blockwise", "subimages", "attention", "decode")  # fp16/bf16 main loops must use wgmma
ARCHS = (80, 90)
COUNTERS = ("hgmma", "hmma", "ldgsts", "tma", "ldg128", "stg128")
# Largest shared memory one block may use (opt-in maximum), bytes.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


@dataclasses.dataclass(frozen=True)
class SMLimits:
    """Per-SM resources that bound how many CTAs of one kernel are resident at once (CUDA occupancy rules)."""

    registers: int = 65536  # 32-bit registers per SM, split evenly over `partitions` warp schedulers
    partitions: int = 4
    reg_unit: int = 256  # registers are allocated per warp in units of this many
    warps: int = 64  # resident warps per SM (2048 threads)
    ctas: int = 32  # resident CTAs per SM
    shared: int = 0  # shared memory per SM, bytes
    shared_reserved: int = 1024  # bytes the driver reserves per CTA (sm_80 and later)
    shared_unit: int = 128  # shared memory allocation granularity, bytes


SM_LIMITS = {80: SMLimits(shared=164 * 1024), 90: SMLimits(shared=228 * 1024)}


def ctas_per_sm(registers: int, num_warps: int, shared_bytes: int, arch: int) -> int:
    """How many CTAs of a kernel one SM holds at once: the least of the limits by registers (per warp, rounded up
    to the allocation unit, warps fitting in each scheduler's quarter of the register file), by resident warps,
    by shared memory (plus the per-CTA reservation, rounded to the allocation unit) and by the CTA count. 0 when one
    CTA does not fit (e.g. shared memory over the per-block limit)."""
    lim = SM_LIMITS[arch]
    if registers <= 0 or num_warps <= 0:
        return 0
    if shared_bytes > SHARED_LIMIT[arch]:
        return 0
    per_warp = -(-registers * 32 // lim.reg_unit) * lim.reg_unit
    warps_by_regs = (lim.registers // lim.partitions // per_warp) * lim.partitions
    by_regs = warps_by_regs // num_warps
    shared = -(-(max(shared_bytes, 0) + lim.shared_reserved) // lim.shared_unit) * lim.shared_unit
    by_shared = lim.shared // shared
    return max(0, min(by_regs, lim.warps // num_warps, by_shared, lim.ctas))


@dataclasses.dataclass
class Result:
    op: str  # record op, one of RECORD_OPS
    label: str
    kernel: str
    arch: int
    dtype: str = ""
    module: str = ""
    jit_like: bool = False
    registers: int = -1
    spill_bytes: int = -1  # STACK + LOCAL from cuobjdump; > 0 means register spills
    shared_bytes: int = -1  # dynamic (metadata.shared) + static (cuobjdump SHARED)
    hgmma: int = 0  # SASS instruction counts
    hmma: int = 0
    ldgsts: int = 0
    tma: int = 0
    ldg128: int = 0
    stg128: int = 0
    expect_tensor_cores: bool = False
    main: bool = False
    wide_stores: bool = False
    num_warps: int = 4
    num_stages: int = 2
    compile_s: float = 0.0
    error: str = ""

    @property
    def tensor_cores(self) -> bool:
        return self.hgmma + self.hmma > 0

    @property
    def ctas_per_sm(self) -> int:
        """Resident CTAs per SM this compile allows (`ctas_per_sm()`); 0 when it did not compile."""
        if self.error:
            return 0
        return ctas_per_sm(self.registers, self.num_warps, self.shared_bytes, self.arch)

    def record(self) -> dict:
        """The JSON record of `--json`: what was compiled and what its SASS holds."""
        return {"op": self.op, "kernel": self.kernel, "config": f"{self.label} (warps={self.num_warps}, "
                f"stages={self.num_stages})", "arch": f"sm_{self.arch}", "dtype": self.dtype, "jit_like": self.jit_like,
                "registers": self.registers, "spill_bytes": self.spill_bytes, "shared_bytes": self.shared_bytes,
                "warps": self.num_warps, "ctas_per_sm": self.ctas_per_sm,
                **{k: getattr(self, k) for k in COUNTERS}, "main": self.main, "problems": self.problems()}  # fmt: skip

    def problems(self) -> list[str]:
        """Why this compiled kernel would fail on a real GPU or misses its design (empty when it is fine)."""
        if self.error:
            return [f"compile failed: {self.error}"]
        out = []
        if not self.jit_like:
            out.append("not compiled JIT-like: the spec gives no `values` at a benchmark shape")
        if self.spill_bytes > 0:
            out.append(f"spills {self.spill_bytes} bytes to local memory ({self.registers} registers)")
        if self.shared_bytes > SHARED_LIMIT[self.arch]:
            out.append(f"shared memory {self.shared_bytes} B > {SHARED_LIMIT[self.arch]} B on sm_{self.arch}")
        if self.expect_tensor_cores and not self.tensor_cores:
            out.append("expected tensor-core instructions (HMMA/HGMMA) in the SASS, found none")
        if self.main:
            if self.arch >= 90 and self.op in HGMMA_OPS and self.dtype in ("fp16", "bf16") and not self.hgmma:
                out.append("fp16/bf16 main loop without HGMMA (wgmma) on sm_90")
            if not (self.ldgsts or self.tma):
                out.append("main loop without cp.async (LDGSTS) or TMA loads: not pipelined")
            if not self.ldg128:
                out.append("main loop without 128-bit global loads")
        if self.wide_stores and not self.stg128:
            out.append("expected 128-bit global stores (STG.E.128), found none")
        return out


def tool(name: str) -> str:
    """Path of a CUDA binary bundled with the triton wheel (cuobjdump, nvdisasm, ptxas)."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: this triton wheel does not bundle {name}")
    return str(path)


def collect_specs(modules=MODULES) -> dict[str, list | str]:
    """module -> its list of AOTSpec, or a string saying why there is none (module not written yet)."""
    found: dict[str, list | str] = {}
    for mod in modules:
        name = f"spectralar_kernels.{mod}"
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            # Only a missing kernel module counts as "not written yet"; anything else is a real failure.
            if e.name != name:
                raise
            found[mod] = f"{name} does not exist yet"
            continue
        if not hasattr(module, "aot_specs"):
            found[mod] = f"{name} has no aot_specs()"
            continue
        found[mod] = list(module.aot_specs())
    return found


def jit_like_source(spec):
    """(signature, constexprs, attrs, jit_like) the JIT would use for the spec's benchmark-shape `values`."""
    signature, constexprs, attrs = dict(spec.signature), dict(spec.constexprs), {}
    values = spec.values or {}
    for i, (name, ty) in enumerate(spec.signature.items()):
        if ty.startswith("*"):
            if spec.values is not None:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif ty[0] in "iu" and name in values:
            v = int(values[name])
            if v == 1:
                signature[name], constexprs[name] = "constexpr", 1
            elif v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs, spec.values is not None


_RESOURCE_RE = re.compile(r"Function\s+(\S+):\s*\n\s*REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
_TC_RE = re.compile(r"\b(HMMA|HGMMA)\b")
_OPCODE_RE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)")


def parse_resource_usage(text: str, kernel: str) -> tuple[int, int, int]:
    """(registers, stack + local bytes, static shared bytes) of `kernel` in cuobjdump output."""
    for m in _RESOURCE_RE.finditer(text):
        if m.group(1) == kernel:
            reg, stack, shared, local = (int(g) for g in m.groups()[1:])
            return reg, stack + local, shared
    raise ValueError(f"no resource usage for {kernel} in cuobjdump output:\n{text}")


def has_tensor_core_ops(sass: str) -> bool:
    return _TC_RE.search(sass) is not None


def count_instructions(sass: str) -> dict[str, int]:
    """Per-property SASS instruction counts (keys COUNTERS) from `cuobjdump -sass` text."""
    counts = dict.fromkeys(COUNTERS, 0)
    for m in _OPCODE_RE.finditer(sass):
        op = m.group(1)
        base = op.split(".")[0]
        wide = re.search(r"\.128(\.|$)", op) is not None
        counts["hgmma"] += base == "HGMMA"
        counts["hmma"] += base == "HMMA"
        counts["ldgsts"] += base == "LDGSTS"
        counts["tma"] += base in ("UTMALDG", "UBLKCP")
        counts["ldg128"] += wide and base in ("LDG", "LDGSTS")
        counts["stg128"] += wide and base == "STG"
    return counts


def cubin_resources(cubin: bytes, kernel: str) -> tuple[int, int, int, dict[str, int]]:
    """(registers, spill bytes, static shared bytes, SASS instruction counts) of `kernel` in a cubin.

    Disassembling takes ~1 s per kernel, so results are kept on disk keyed by the cubin's sha256
    (SPECTRALAR_AOT_CACHE, default ~/.cache/spectralar/kernel_resources); a cubin never changes meaning.
    """
    key = hashlib.sha256(cubin + kernel.encode() + b"v2").hexdigest()
    cache = Path(os.environ.get("SPECTRALAR_AOT_CACHE", Path.home() / ".cache" / "spectralar" / "kernel_resources"))
    entry = cache / f"{key}.json"
    if entry.exists():
        try:
            reg, spill, shared, counts = json.loads(entry.read_text())
            return reg, spill, shared, counts
        except (OSError, ValueError):
            pass  # a torn write from a concurrent run: recompute
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{kernel}.cubin"
        path.write_bytes(cubin)
        usage = subprocess.run([tool("cuobjdump"), "--dump-resource-usage", str(path)],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
        sass = subprocess.run([tool("cuobjdump"), "-sass", str(path)],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
    found = (*parse_resource_usage(usage, kernel), count_instructions(sass))
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp_entry = entry.with_suffix(f".{os.getpid()}.tmp")
        tmp_entry.write_text(json.dumps(found))
        tmp_entry.replace(entry)  # atomic: concurrent runs never read half a file
    except OSError:
        pass  # read-only home: just no cache
    return found


def compile_jit_like(spec, arch: int):
    """triton.compile of one AOTSpec for sm_<arch>, specialised as the JIT would (`jit_like_source`). Needs a
    real JITFunction (the interpreter off)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs, attrs, _ = jit_like_source(spec)
    return triton.compile(ASTSource(spec.kernel, signature, constexprs, attrs=attrs),
                          target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})  # fmt: skip


def sass_of(spec, arch: int) -> str:
    """`cuobjdump -sass` of one AOTSpec compiled JIT-like for sm_<arch> (`compile_jit_like`)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(compile_jit_like(spec, arch).asm["cubin"])
        return subprocess.run([tool("cuobjdump"), "-sass", str(path)], capture_output=True, text=True,
                              check=True).stdout  # fmt: skip


def compile_spec(module: str, spec, arch: int) -> Result:
    """Compile one AOTSpec for sm_<arch>, JIT-like, and read its resources. Needs a real JITFunction."""
    name = getattr(spec.kernel, "__name__", str(spec.kernel))
    jit_like = jit_like_source(spec)[3]
    res = Result(op=spec.op or module.split(".")[0], label=spec.label or name, kernel=name, arch=arch,
                 dtype=spec.dtype, module=module, jit_like=jit_like, expect_tensor_cores=spec.expect_tensor_cores,
                 main=spec.main, wide_stores=spec.wide_stores,
                 num_warps=spec.num_warps, num_stages=spec.num_stages)  # fmt: skip
    t0 = time.perf_counter()
    try:
        compiled = compile_jit_like(spec, arch)
    except Exception as e:  # a compile error is a result to report, not a crash of the whole check
        res.error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"[:300]
        res.compile_s = time.perf_counter() - t0
        return res
    res.compile_s = time.perf_counter() - t0
    usage = cubin_resources(compiled.asm["cubin"], compiled.metadata.name)
    res.registers, res.spill_bytes, static_shared, counts = usage
    for k in COUNTERS:
        setattr(res, k, int(counts.get(k, 0)))
    res.shared_bytes = int(compiled.metadata.shared) + static_shared
    return res


@functools.cache
def _specs_of(module: str) -> list:
    specs = collect_specs((module,))[module]
    assert not isinstance(specs, str), specs
    return specs


def _compile_job(job: tuple[str, int, int]) -> Result:
    module, i, arch = job
    return compile_spec(module, _specs_of(module)[i], arch)


def _compile_here(modules, archs, jobs: int) -> tuple[list[Result], dict[str, str]]:
    todo, missing = [], {}
    for module, specs in collect_specs(modules).items():
        if isinstance(specs, str):
            missing[module] = specs
            continue
        todo += [(module, i, arch) for i in range(len(specs)) for arch in archs]
    if jobs <= 1 or len(todo) <= 1:
        return [_compile_job(job) for job in todo], missing
    # fork: workers inherit the imported op modules (JITFunctions do not pickle); nothing has been
    # compiled in this process yet, so no compiler state is forked mid-flight.
    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        return list(pool.map(_compile_job, todo)), missing


def default_jobs() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def compile_all(modules=MODULES, archs=ARCHS, jobs: int | None = None) -> tuple[list[Result], dict[str, str]]:
    """Compile every spec of every module for every arch: (results, {module: why it has no specs}).

    Runs in a child process with TRITON_INTERPRET unset when this process has the interpreter on.
    Compiled kernels also land in triton's on-disk cache, so a second run takes seconds.
    """
    import triton.knobs

    jobs = default_jobs() if jobs is None else jobs
    if not triton.knobs.runtime.interpret:
        return _compile_here(modules, archs, jobs)
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # find spectralar_kernels as we do
    cmd = [sys.executable, "-m", "spectralar_kernels.testing.aot", "--raw-json", "--jobs", str(jobs), "--ops", *modules,
           "--arch", *map(str, archs)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"AOT compile child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    data = json.loads(proc.stdout)
    return [Result(**r) for r in data["results"]], data["missing"]


def markdown(results: list[Result], missing: dict[str, str]) -> str:
    lines = [
        "| op | kernel | config | arch | regs | spills (B) | shared (B) | CTAs/SM | HGMMA | HMMA | LDGSTS | LDG.128 "
        "| STG.128 | problems |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.op}{' (main)' if r.main else ''} | {r.kernel} | {r.label} (warps={r.num_warps}, "
            f"stages={r.num_stages}) | sm_{r.arch} | {r.registers} | {r.spill_bytes} | {r.shared_bytes} | "
            f"{r.ctas_per_sm} | {r.hgmma} | {r.hmma} | {r.ldgsts + r.tma} | {r.ldg128} | {r.stg128} | "
            f"{'; '.join(r.problems()) or '-'} |"
        )
    for module, why in missing.items():
        lines.append(f"| - | - | {module}: {why} | - | - | - | - | - | - | - | - | - | - | not checked |")
    return "\n".join(lines) + "\n"


def parser(description: str | None = None) -> argparse.ArgumentParser:
    """The command line; bench/kernel_resources.py adds --write to it."""
    p = argparse.ArgumentParser(description=description or __doc__.splitlines()[0])
    p.add_argument("--ops", nargs="+", default=list(MODULES), help="kernel modules to check (default: all)")
    p.add_argument("--arch", nargs="+", type=int, default=list(ARCHS), help="SM versions (default: 80 90)")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="write one JSON record per compiled kernel to PATH ('-' for stdout)")  # fmt: skip
    p.add_argument("--raw-json", action="store_true", help="internal: full results as JSON on stdout")
    p.add_argument("--jobs", type=int, default=default_jobs(), help="parallel compile processes")
    return p


def run(args, p: argparse.ArgumentParser) -> tuple[int, list[Result], dict[str, str]]:
    """Compile what `args` asks and print it (table, JSON records or raw JSON): (exit status, results, missing).
    The exit status is 1 when any compiled kernel has a problem."""
    unknown = [m for m in args.ops if m not in MODULES]
    if unknown:
        p.error(f"unknown modules {unknown}; choose from {' '.join(MODULES)}")
    results, missing = compile_all(args.ops, args.arch, args.jobs)
    bad = int(any(r.problems() for r in results))
    if args.raw_json:
        print(json.dumps({"results": [dataclasses.asdict(r) for r in results], "missing": missing}))
        return bad, results, missing
    if args.json:
        text = json.dumps([r.record() for r in results], indent=1)
        if args.json == "-":
            print(text)
            return bad, results, missing
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    print(markdown(results, missing))
    return bad, results, missing


def main(argv=None) -> int:
    p = parser()
    return run(p.parse_args(argv), p)[0]


if __name__ == "__main__":
    sys.exit(main())
