"""Triton JPEG-style blockwise 2-D DCT-II / inverse: independent b x b blocks of `[..., H, W]`.

blockwise-v1 (`_dct2d_block_fwd_kernel`), the kernel timed on an H200 (14x the reference in bf16,
3.4x in fp32 at 64x3x256x256, b = 8): one [BT, BT] tile (BT = 16/32/64, a power of two >= b) per
program covers k = BT // b blocks per axis (R = k b <= BT rows/cols used), and with the block-diagonal
K = diag(D_b, ..., D_b, 0) [BT, BT] the tile's transform is K @ X @ K^T: two small tensor-core dots, one
read and one write of the tensor. Blocks larger than BLOCKWISE_MAX run the whole-plane launcher on a
[.., b, b] copy.

blockwise-v2 (`_dct2d_block_v2_kernel`), the bandwidth design, not yet timed on a GPU: a persistent grid
of as many programs as the SMs hold at once, each looping over [64, 64] tiles t = pid, pid + P, ... of all
planes. The programs per SM come from the compiled kernel's registers and shared memory on the device
(`resident_ctas`; PROGRAMS_PER_SM only if they cannot be read). The basis K = kron(I, D_b) [64, 64] (64 // b
copies of D_b on the diagonal, zero beyond R = (64 // b) b) and K^T are loaded once per program; the tile loop
is a `tl.range` with num_stages=3, so the next tiles' loads are in flight (cp.async into shared memory) while
the current one is transformed; Y = (K @ X) @ K^T runs on tensor cores (wgmma on sm_90: a 64-row tile, 4
warps), X going straight from the cp.async buffer into the first product; the [64, 64] result is stored with
128-bit stores when the row stride is a multiple of 16 (the JIT's divisibility hint, true for the usual
shapes). FULL (b divides 64, so R = 64) drops the R masks. Blocks that do not divide 64 run with R < 64 (the
last 64 - R rows and columns of each tile unused); blocks above BLOCKWISE_MAX run the plane launcher.
fp32 uses IEEE products (FMA units). Both candidates meet the fp32 tolerance (3xTF32, a TF32 head/tail split
of each operand and three tensor-core products, errs ~1e-6; plain TF32, ~5e-4, would not), but compiled for
the benchmark shape 3xTF32 holds the split basis in registers and spills on sm_80 (255 registers), while IEEE
does not. To keep the FMA work small, fp32 blocks dividing 16 use KW = 16 wide products: K = kron(I, K_16)
acts on each 16-wide group alone, so X @ K^T is one [64 * 4, 16] @ [16, 16] product (and K @ T the same on
T^T): 64 flop/pixel instead of 256. That configuration runs with 4 warps: 168 registers on sm_90, so 3 CTAs
(12 warps) per SM, where 8 warps compiled to 149-157 registers and 1 CTA (8 warps). fp32 blocks that do not
divide 16 keep the 64-wide products at 8 warps (122 registers, 2 CTAs). fp16/bf16 keep the 64-wide products,
which wgmma needs (and memory bounds them anyway): 100 registers, 4 CTAs per SM (shared memory allows 4).

Numerics as in transforms/triton.py: v1 uses IEEE dots for fp32, fp16/bf16 the input dtype on tensor
cores with fp32 accumulation (an fp32 basis under the interpreter, which computes bf16 dots wrongly).

Non-finite inputs: a tile product spreads 0 * NaN = NaN (and 0 * inf) from one block into every block of the
tile through the zeros of the block-diagonal basis, where the reference transforms each block alone. It also
makes every output of that tile non-finite, so each kernel checks its products (one reduction per tile, no
extra registers in the main loop) and sets a flag; `_dct2d_block_fix_kernel`, launched after it, reads the
flag and returns (one load per program) unless it is set. Then it finds the tiles whose outputs are not all
finite and recomputes them block by block in IEEE fp32, one product per block of columns (`_rmul_blocks`), so
a NaN or inf meets only its own block's basis: the result has exactly the reference's NaN / +-inf pattern and
its finite values (the blocks that share a tile with one). Kept out of the main kernels because any extra path
there costs registers everywhere: v1 at 32 registers holds the 32 CTAs an SM allows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import cuda_sm_count, warn_once
from . import ref
from .ref import BLOCKWISE_MAX
from .triton import _interpreter_bf16, basis_dtype, dct2d_fwd

# BLOCKWISE_MAX (dct/ref.py): largest block of the blockwise kernels (v1: BT=64 in fp32 spills)
V2_TILE = 64  # v2 tile side: wgmma needs >= 64 rows; 64 is a multiple of every power-of-two block <= 32
V2_WARPS = 4  # fp16/bf16 (one warpgroup, the smallest wgmma unit) and fp32 with 16-wide products
V2_WARPS_FP32 = 8  # fp32 (IEEE FMA products) with 64-wide products: 4 warps spill, 8 need ~122 registers
V2_FP32_KW = 16  # fp32 product width for blocks dividing it: kron(I, D_b) [16, 16] per 16-wide group
V2_STAGES = 3  # tiles in flight per program (3 x 8 KB of bf16 shared memory)
PROGRAMS_PER_SM = 4  # v2 persistent grid per SM when the compiled kernel's resources cannot be read
INTERPRETER_PROGRAMS = 2  # v2 under the interpreter: few programs, so each loops over several tiles
_KRON_CACHE: dict = {}


@triton.jit
def _tile_bad(y):
    """1 if the tile y has a NaN or inf anywhere, else 0 (a block-wide reduction)."""
    return tl.sum(tl.sum(y * 0.0, axis=1), axis=0) != 0.0  # 0 * NaN, 0 * inf = NaN


@triton.jit
def _dct2d_block_fwd_kernel(
    x_ptr, y_ptr, k_ptr, flag_ptr,
    H, W, R, tiles_h, tiles_w,
    stride_xp, stride_xh, stride_yp, stride_yh,
    BT: tl.constexpr,
):  # fmt: skip
    DOT: tl.constexpr = k_ptr.dtype.element_ty
    pid = tl.program_id(0).to(tl.int64)
    p = pid // (tiles_h * tiles_w)
    th = (pid // tiles_w) % tiles_h
    tw = pid % tiles_w
    offs = tl.arange(0, BT)
    rows = th * R + offs
    cols = tw * R + offs
    # A tile covers R = k * b rows and cols (whole blocks), so masking at R never splits a block.
    mask = (offs[:, None] < R) & (rows[:, None] < H) & (offs[None, :] < R) & (cols[None, :] < W)
    xt = tl.load(x_ptr + p * stride_xp + rows[:, None] * stride_xh + cols[None, :], mask=mask, other=0.0)
    k = tl.load(k_ptr + offs[:, None] * BT + offs[None, :]).to(tl.float32)  # K [BT, BT], zero-padded
    kt = tl.load(k_ptr + offs[None, :] * BT + offs[:, None]).to(tl.float32)  # K^T
    if DOT == tl.float32:
        t = tl.dot(k, xt.to(tl.float32), input_precision="ieee")
        y = tl.dot(t, kt, input_precision="ieee")
    else:
        t = tl.dot(k.to(DOT), xt.to(tl.float32).to(DOT))
        y = tl.dot(t.to(DOT), kt.to(DOT))
    tl.store(y_ptr + p * stride_yp + rows[:, None] * stride_yh + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
    # A NaN or inf anywhere in the tile makes every output non-finite (0 * NaN, 0 * inf = NaN): flag it for
    # `_dct2d_block_fix_kernel` (module docstring).
    if _tile_bad(y) > 0:
        tl.store(flag_ptr, 1)


@triton.jit
def _dct2d_block_v2_kernel(
    x_ptr, y_ptr, k_ptr, flag_ptr,
    H, W, R, tiles_h, tiles_w, num_tiles,
    stride_xp, stride_xh, stride_yp, stride_yh,
    TILE: tl.constexpr, FULL: tl.constexpr, NUM_STAGES: tl.constexpr, KW: tl.constexpr,
):  # fmt: skip
    DOT: tl.constexpr = k_ptr.dtype.element_ty
    offs = tl.arange(0, TILE)
    # The basis once per program: K and K^T [KW, KW] (KW = TILE, or 16 for the fp32 narrow products).
    offs_k = tl.arange(0, KW)
    k = tl.load(k_ptr + offs_k[:, None] * KW + offs_k[None, :])
    kt = tl.load(k_ptr + offs_k[None, :] * KW + offs_k[:, None])
    per_plane = tiles_h * tiles_w
    bad = 0  # some tile of this program held a NaN or inf
    for t in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0), num_stages=NUM_STAGES):
        p = (t // per_plane).to(tl.int64)
        rows = ((t % per_plane) // tiles_w) * R + offs
        cols = (t % tiles_w) * R + offs
        # Tiles start on block boundaries and H, W are multiples of b: masking never splits a block.
        mask = (rows[:, None] < H) & (cols[None, :] < W)
        if not FULL:
            mask = mask & (offs[:, None] < R) & (offs[None, :] < R)
        xt = tl.load(x_ptr + p * stride_xp + rows[:, None] * stride_xh + cols[None, :], mask=mask, other=0.0)
        if KW < TILE:
            # fp32, b divides KW: K = kron(I, K_w) acts on each KW-wide group of columns (rows) alone, so
            # X @ K^T is one [TILE * TILE / KW, KW] @ [KW, KW] product (4x fewer flops at KW = 16), and
            # K @ T the same product on T^T.
            tmp = tl.dot(tl.reshape(xt.to(tl.float32), (TILE * TILE // KW, KW)), kt.to(tl.float32),
                         input_precision="ieee")  # fmt: skip
            tmp = tl.reshape(tl.trans(tl.reshape(tmp, (TILE, TILE))), (TILE * TILE // KW, KW))
            y = tl.dot(tmp, kt.to(tl.float32), input_precision="ieee")
            y = tl.trans(tl.reshape(y, (TILE, TILE)))
        elif DOT == tl.float32:
            tmp = tl.dot(k.to(tl.float32), xt.to(tl.float32), input_precision="ieee")
            y = tl.dot(tmp, kt.to(tl.float32), input_precision="ieee")
        else:
            tmp = tl.dot(k, xt)  # fp16/bf16 operands, fp32 accumulation
            y = tl.dot(tmp.to(DOT), kt)  # the intermediate rounded to the input dtype, as the reference does
        y_ptrs = y_ptr + p * stride_yp + rows[:, None] * stride_yh + cols[None, :]
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)
        # A NaN or inf anywhere in the tile makes every output non-finite (0 * NaN, 0 * inf = NaN).
        bad = tl.maximum(bad, _tile_bad(y))
    if bad > 0:
        tl.store(flag_ptr, 1)  # for `_dct2d_block_fix_kernel` (module docstring)


@triton.jit
def _rmul_blocks(m, a_t, b, TILE: tl.constexpr, CHUNK: tl.constexpr):
    """m @ A^T for m [CHUNK, TILE] fp32 with A = kron(I, A_b) [TILE, TILE] (a_t = A^T, fp32). One product per
    b-wide block of columns, taking only that block's columns of m and keeping only its outputs: a NaN or inf
    meets only its own block's entries of A, never the zeros between blocks."""
    group = tl.arange(0, TILE) // b
    out = tl.zeros((CHUNK, TILE), dtype=tl.float32)
    for g in range(0, tl.cdiv(TILE, b)):
        sel = (group == g)[None, :]
        out = tl.where(sel, tl.dot(tl.where(sel, m, 0.0), a_t, input_precision="ieee"), out)
    return out


@triton.jit
def _dct2d_block_fix_kernel(
    x_ptr, y_ptr, k_ptr, flag_ptr,
    H, W, R, B, tiles_h, tiles_w, num_tiles,
    stride_xp, stride_xh, stride_yp, stride_yh,
    TILE: tl.constexpr,
):  # fmt: skip
    """After either blockwise kernel: if it flagged a NaN or inf, every TILE x TILE tile of whole blocks (R x R
    used) whose outputs hold one is recomputed exactly, block by block, in IEEE fp32: Y = (K (X K^T)^T)^T with
    `_rmul_blocks` for both steps, U = X K^T going through y by 16-row chunks and then Y^T = U^T K^T by 16-column
    chunks in place. k_ptr: kron(I, D_b) [TILE, TILE] fp32 (D_b^T for the inverse). Without a flag: one load."""
    if tl.load(flag_ptr) == 0:
        return
    CHUNK: tl.constexpr = 16
    offs = tl.arange(0, TILE)
    offs_c = tl.arange(0, CHUNK)
    k_t = tl.load(k_ptr + offs[None, :] * TILE + offs[:, None])  # K^T
    per_plane = tiles_h * tiles_w
    for t in range(tl.program_id(0), num_tiles, tl.num_programs(0)):
        p = (t // per_plane).to(tl.int64)
        row0 = ((t % per_plane) // tiles_w) * R
        col0 = (t % tiles_w) * R
        n_rows = tl.minimum(R, H - row0)
        n_cols = tl.minimum(R, W - col0)
        x_base = x_ptr + p * stride_xp + row0 * stride_xh + col0
        y_base = y_ptr + p * stride_yp + row0 * stride_yh + col0
        mask = (offs[:, None] < n_rows) & (offs[None, :] < n_cols)
        y_tile = tl.load(y_base + offs[:, None] * stride_yh + offs[None, :], mask=mask, other=0.0)
        if _tile_bad(y_tile.to(tl.float32)) > 0:
            tl.debug_barrier()  # every thread has checked this tile before any rewrites it
            for c0 in tl.static_range(0, TILE, CHUNK):
                r = c0 + offs_c
                m = (r[:, None] < n_rows) & (offs[None, :] < n_cols)
                xc = tl.load(x_base + r[:, None] * stride_xh + offs[None, :], mask=m, other=0.0).to(tl.float32)
                u = _rmul_blocks(xc, k_t, B, TILE, CHUNK)
                tl.store(y_base + r[:, None] * stride_yh + offs[None, :], u.to(y_ptr.dtype.element_ty), mask=m)
            tl.debug_barrier()  # U complete and visible to the whole program
            for c0 in tl.static_range(0, TILE, CHUNK):
                c = c0 + offs_c
                m = (offs[None, :] < n_rows) & (c[:, None] < n_cols)
                ptrs = y_base + offs[None, :] * stride_yh + c[:, None]  # U[:, chunk]^T [CHUNK, TILE]
                v = _rmul_blocks(tl.load(ptrs, mask=m, other=0.0).to(tl.float32), k_t, B, TILE, CHUNK)
                tl.debug_barrier()  # every thread has read this chunk of U before any overwrites it
                tl.store(ptrs, v.to(y_ptr.dtype.element_ty), mask=m)
            tl.debug_barrier()


def block_config(b: int) -> dict:
    bt = max(16, triton.next_power_of_2(b))
    return dict(BT=bt, num_warps=max(1, bt // 8))


def _kron_basis(b: int, bt: int, dtype: torch.dtype, device, inverse: bool) -> torch.Tensor:
    """K = diag(D_b, ..., D_b, 0) [BT, BT] with BT // b copies (D_b^T for the inverse); cached."""
    key = (b, bt, dtype, device, inverse)
    if key not in _KRON_CACHE:
        d = ref.dct_basis(b, torch.float64, "cpu")
        d = d.T if inverse else d
        kron = torch.zeros(bt, bt, dtype=torch.float64)
        for s in range(0, (bt // b) * b, b):
            kron[s : s + b, s : s + b] = d
        _KRON_CACHE[key] = kron.to(dtype=dtype, device=device).contiguous()
    return _KRON_CACHE[key]


def v2_config(b: int, dtype: torch.dtype) -> dict:
    """v2 launch constants for block b <= BLOCKWISE_MAX: R = rows/cols of a tile in whole blocks, KW the
    width of the basis products (V2_FP32_KW for fp32 blocks dividing it, else the whole tile)."""
    rows = (V2_TILE // b) * b
    fp32 = dtype == torch.float32
    kw = V2_FP32_KW if fp32 and V2_FP32_KW % b == 0 else V2_TILE
    return dict(TILE=V2_TILE, R=rows, FULL=rows == V2_TILE, KW=kw, NUM_STAGES=V2_STAGES,
                num_warps=V2_WARPS_FP32 if fp32 and kw == V2_TILE else V2_WARPS)  # fmt: skip


def resident_ctas(n_regs: int, shared_bytes: int, num_warps: int, regs_per_sm: int = 65536,
                  shared_per_sm: int = 228 * 1024, threads_per_sm: int = 2048, max_ctas: int = 32) -> int:
    """CTAs of one kernel an SM holds at once: the smallest of the register, shared-memory, thread and CTA limits.

    Registers are allocated per warp in units of 256 (n_regs rounded up to a multiple of 8 per thread); each CTA
    also takes 1 KB of shared memory reserved by the driver (sm_80 and later)."""
    regs_per_warp = -(-n_regs * 32 // 256) * 256
    by_regs = regs_per_sm // (regs_per_warp * num_warps)
    by_shared = shared_per_sm // (shared_bytes + 1024)
    return max(1, min(by_regs, by_shared, threads_per_sm // (32 * num_warps), max_ctas))


_RESIDENT: dict = {}


def v2_programs(device: torch.device, num_tiles: int, args: tuple = (), meta: dict | None = None) -> int:
    """Persistent grid size: on CUDA as many programs as the SMs hold at once, from the compiled kernel's registers
    and shared memory (`resident_ctas`, once per configuration and device; PROGRAMS_PER_SM when that is not
    available), INTERPRETER_PROGRAMS elsewhere."""
    if device.type != "cuda":
        return max(1, min(INTERPRETER_PROGRAMS, num_tiles))
    key = (device.index, args[0].dtype if args else None, tuple(sorted((meta or {}).items())))
    if key not in _RESIDENT:
        _RESIDENT[key] = PROGRAMS_PER_SM
        if args and meta is not None:
            try:  # the compiled kernel's resources (CompiledKernel.n_regs is set when it is loaded)
                compiled = _dct2d_block_v2_kernel.warmup(*args, grid=(1,), **meta)
                compiled._init_handles()
                props = torch.cuda.get_device_properties(device)
                _RESIDENT[key] = resident_ctas(
                    compiled.n_regs, compiled.metadata.shared, meta["num_warps"],
                    regs_per_sm=getattr(props, "regs_per_multiprocessor", 65536),
                    shared_per_sm=getattr(props, "shared_memory_per_multiprocessor", 228 * 1024),
                    threads_per_sm=getattr(props, "max_threads_per_multi_processor", 2048),
                )  # fmt: skip
            except Exception as e:  # a triton without these attributes: keep the fixed plan, say so once
                warn_once("blockwise.plan", f"blockwise-v2: resources unreadable ({e!r}); {PROGRAMS_PER_SM} per SM")
    return max(1, min(_RESIDENT[key] * cuda_sm_count(device), num_tiles))


FIX_TILE = 32  # `_dct2d_block_fix_kernel`'s tiles: whole blocks of up to BLOCKWISE_MAX


def _fix_nonfinite(x3: torch.Tensor, y3: torch.Tensor, block: int, inverse: bool, flag: torch.Tensor) -> None:
    """Launch `_dct2d_block_fix_kernel` after a blockwise kernel: one load per program unless the flag is set."""
    h, w = x3.shape[-2], x3.shape[-1]
    rows = (FIX_TILE // block) * block
    tiles_h, tiles_w = triton.cdiv(h, rows), triton.cdiv(w, rows)
    num_tiles = x3.shape[0] * tiles_h * tiles_w
    programs = cuda_sm_count(x3.device) if x3.is_cuda else INTERPRETER_PROGRAMS
    kron = _kron_basis(block, FIX_TILE, torch.float32, x3.device, inverse)
    _dct2d_block_fix_kernel[(max(1, min(programs, num_tiles)),)](
        x3, y3, kron, flag, h, w, rows, block, tiles_h, tiles_w, num_tiles,
        x3.stride(0), x3.stride(1), y3.stride(0), y3.stride(1), TILE=FIX_TILE, num_warps=4,
    )  # fmt: skip


def blockwise_dct_fwd(
    x: torch.Tensor, block: int, inverse: bool, impl: str | None = None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Launcher: blockwise DCT-II (inverse=False) or DCT-III of `x [..., H, W]`; writes into `out` when given.

    impl: "blockwise-v1" or "blockwise-v2"; None = the newest shipped (what SPECTRALAR_KERNELS=triton runs).
    Blocks above BLOCKWISE_MAX always run the whole-plane launcher on gathered tiles (the public function
    dispatches them under the ("dct2d", "plane") decision and passes that id, e.g. "plane-v2").
    """
    if impl is None:
        from .._dispatch import latest

        impl = latest("dct2d", "blockwise")
    assert impl in ("blockwise-v1", "blockwise-v2") or (block > BLOCKWISE_MAX and impl.startswith("plane")), impl
    h, w = x.shape[-2], x.shape[-1]
    x3 = x.reshape(-1, h, w)  # [P, H, W]
    if x3.stride(-1) != 1:
        x3 = x3.contiguous()
    y = torch.empty_like(x, memory_format=torch.contiguous_format) if out is None else out
    assert y.shape == x.shape and y.dtype == x.dtype and y.is_contiguous()
    y3 = y.view(-1, h, w)
    if block > BLOCKWISE_MAX:
        # Big blocks: gather them into planes [P, H/b, W/b, b, b], transform, scatter back.
        b = block
        tiles = x3.reshape(-1, h // b, b, w // b, b).transpose(2, 3).contiguous()
        res = dct2d_fwd(tiles, None, inverse)
        y3.copy_(res.transpose(2, 3).reshape(-1, h, w))
        return y
    if _interpreter_bf16(y):
        y3 = torch.full(y3.shape, float("nan"), dtype=torch.float32, device=y.device)
    flag = torch.zeros(1, dtype=torch.int32, device=x.device)  # set by a kernel that met a NaN or inf
    if impl == "blockwise-v1":
        cfg = block_config(block)
        bt = cfg["BT"]
        rows = (bt // block) * block
        kron = _kron_basis(block, bt, basis_dtype(x.dtype), x.device, inverse)
        tiles_h, tiles_w = triton.cdiv(h, rows), triton.cdiv(w, rows)
        grid = (x3.shape[0] * tiles_h * tiles_w,)
        _dct2d_block_fwd_kernel[grid](
            x3, y3, kron, flag, h, w, rows, tiles_h, tiles_w, x3.stride(0), x3.stride(1), y3.stride(0), y3.stride(1),
            BT=bt, num_warps=cfg["num_warps"],
        )  # fmt: skip
    else:
        cfg = v2_config(block, x.dtype)
        kron = _kron_basis(block, cfg["KW"], basis_dtype(x.dtype), x.device, inverse)
        tiles_h, tiles_w = triton.cdiv(h, cfg["R"]), triton.cdiv(w, cfg["R"])
        num_tiles = x3.shape[0] * tiles_h * tiles_w
        assert num_tiles < 2**31
        args = (x3, y3, kron, flag, h, w, cfg["R"], tiles_h, tiles_w, num_tiles,
                x3.stride(0), x3.stride(1), y3.stride(0), y3.stride(1))  # fmt: skip
        meta = dict(TILE=cfg["TILE"], FULL=cfg["FULL"], NUM_STAGES=cfg["NUM_STAGES"], KW=cfg["KW"],
                    num_warps=cfg["num_warps"], num_stages=cfg["NUM_STAGES"])  # fmt: skip
        _dct2d_block_v2_kernel[(v2_programs(x.device, num_tiles, args, meta),)](*args, **meta)
    _fix_nonfinite(x3, y3, block, inverse, flag)
    if y3.dtype != y.dtype:
        y.view(-1, h, w).copy_(y3)
    return y


class BlockwiseDCTFunction(torch.autograd.Function):
    """Blockwise dct2d / idct2d with the transpose as gradient (each block's basis is orthonormal)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, block: int, inverse: bool, impl: str) -> torch.Tensor:
        ctx.block, ctx.inverse, ctx.impl = block, inverse, impl
        return blockwise_dct_fwd(x, block, inverse, impl)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return blockwise_dct_fwd(grad.contiguous(), ctx.block, not ctx.inverse, ctx.impl), None, None, None
