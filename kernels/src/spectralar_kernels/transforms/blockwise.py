"""Triton JPEG-style blockwise 2-D DCT-II / inverse: independent b x b blocks of `[..., H, W]`.

blockwise-v1 (`_dct2d_block_fwd_kernel`), the kernel timed on an H200 (14x the reference in bf16,
3.4x in fp32 at 64x3x256x256, b = 8): one [BT, BT] tile (BT = 16/32/64, a power of two >= b) per
program covers k = BT // b blocks per axis (R = k b <= BT rows/cols used), and with the block-diagonal
K = diag(D_b, ..., D_b, 0) [BT, BT] the tile's transform is K @ X @ K^T: two small tensor-core dots, one
read and one write of the tensor. Blocks larger than BLOCKWISE_MAX run the whole-plane launcher on a
[.., b, b] copy.

blockwise-v2 (`_dct2d_block_v2_kernel`), the bandwidth design, not yet timed on a GPU: a persistent grid
of about PROGRAMS_PER_SM x (number of SMs) programs, each looping over [64, 64] tiles t = pid, pid + P,
... of all planes. The basis K = kron(I, D_b) [64, 64] (64 // b copies of D_b on the diagonal, zero
beyond R = (64 // b) b) and K^T are loaded once per program; the tile loop is a `tl.range` with
num_stages=3, so the next tiles' loads are in flight (cp.async into shared memory) while the current one
is transformed; Y = (K @ X) @ K^T runs on tensor cores (wgmma on sm_90: a 64-row tile, 4 warps), X going
straight from the cp.async buffer into the first product; the [64, 64] result is stored with 128-bit
stores when the row stride is a multiple of 16 (the JIT's divisibility hint, true for the usual shapes).
FULL (b divides 64, so R = 64) drops the R masks. Blocks that do not divide 64 run with R < 64 (the last
64 - R rows and columns of each tile unused); blocks above BLOCKWISE_MAX run the plane launcher.
fp32 uses IEEE products (FMA units) with 8 warps. Both candidates meet the fp32 tolerance (3xTF32, a
TF32 head/tail split of each operand and three tensor-core products, errs ~1e-6; plain TF32, ~5e-4, would
not), but compiled for the benchmark shape 3xTF32 holds the split basis in registers and spills on sm_80
(255 registers, 24-350 bytes of spills at 4 or 8 warps, 2 or 3 stages), while IEEE at 8 warps needs
120-150 registers and no spills on sm_80 and sm_90. To keep the FMA work small, fp32 blocks dividing 16
use KW = 16 wide products: K = kron(I, K_16) acts on each 16-wide group alone, so X @ K^T is one
[64 * 4, 16] @ [16, 16] product (and K @ T the same on T^T): 64 flop/pixel instead of 256 (estimate for
an H200: memory-bound, ~25-30 us at 64x3x256x256, against v1's measured 164 us). fp16/bf16 keep the
64-wide products, which wgmma needs (and memory bounds them anyway).

Numerics as in dct/triton.py: v1 uses IEEE dots for fp32, fp16/bf16 the input dtype on tensor
cores with fp32 accumulation (an fp32 basis under the interpreter, which computes bf16 dots wrongly).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import DTYPE_NAME, PTR_SIG, AOTSpec, cuda_sm_count
from . import ref
from .ref import BLOCKWISE_MAX
from .triton import _interpreter_bf16, basis_dtype, dct2d_fwd

# BLOCKWISE_MAX (dct/ref.py): largest block of the blockwise kernels (v1: BT=64 in fp32 spills)
V2_TILE = 64  # v2 tile side: wgmma needs >= 64 rows; 64 is a multiple of every power-of-two block <= 32
V2_WARPS = 4  # fp16/bf16: one warpgroup, the smallest wgmma unit (32 fp32 accumulator registers per thread)
V2_WARPS_FP32 = 8  # fp32 (IEEE FMA products): 4 warps spill at KW = 64, 8 need ~120-150 registers
V2_FP32_KW = 16  # fp32 product width for blocks dividing it: kron(I, D_b) [16, 16] per 16-wide group
V2_STAGES = 3  # tiles in flight per program (3 x 8 KB of bf16 shared memory)
PROGRAMS_PER_SM = 4  # v2 persistent grid: programs per SM (a few resident per SM hide the load latency)
INTERPRETER_PROGRAMS = 2  # v2 under the interpreter: few programs, so each loops over several tiles
_KRON_CACHE: dict = {}


@triton.jit
def _dct2d_block_fwd_kernel(
    x_ptr, y_ptr, k_ptr,
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


@triton.jit
def _dct2d_block_v2_kernel(
    x_ptr, y_ptr, k_ptr,
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
    for t in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0), num_stages=NUM_STAGES):
        p = (t // per_plane).to(tl.int64)
        th = (t % per_plane) // tiles_w
        tw = t % tiles_w
        rows = th * R + offs
        cols = tw * R + offs
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
                num_warps=V2_WARPS_FP32 if fp32 else V2_WARPS)  # fmt: skip


def v2_programs(device: torch.device, num_tiles: int) -> int:
    """Persistent grid size: PROGRAMS_PER_SM per SM on CUDA, INTERPRETER_PROGRAMS elsewhere."""
    n = PROGRAMS_PER_SM * cuda_sm_count(device) if device.type == "cuda" else INTERPRETER_PROGRAMS
    return max(1, min(n, num_tiles))


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
    if impl == "blockwise-v1":
        cfg = block_config(block)
        bt = cfg["BT"]
        rows = (bt // block) * block
        kron = _kron_basis(block, bt, basis_dtype(x.dtype), x.device, inverse)
        tiles_h, tiles_w = triton.cdiv(h, rows), triton.cdiv(w, rows)
        grid = (x3.shape[0] * tiles_h * tiles_w,)
        _dct2d_block_fwd_kernel[grid](
            x3, y3, kron, h, w, rows, tiles_h, tiles_w, x3.stride(0), x3.stride(1), y3.stride(0), y3.stride(1),
            BT=bt, num_warps=cfg["num_warps"],
        )  # fmt: skip
    else:
        cfg = v2_config(block, x.dtype)
        kron = _kron_basis(block, cfg["KW"], basis_dtype(x.dtype), x.device, inverse)
        tiles_h, tiles_w = triton.cdiv(h, cfg["R"]), triton.cdiv(w, cfg["R"])
        num_tiles = x3.shape[0] * tiles_h * tiles_w
        assert num_tiles < 2**31
        grid = (v2_programs(x.device, num_tiles),)
        _dct2d_block_v2_kernel[grid](
            x3, y3, kron, h, w, cfg["R"], tiles_h, tiles_w, num_tiles,
            x3.stride(0), x3.stride(1), y3.stride(0), y3.stride(1),
            TILE=cfg["TILE"], FULL=cfg["FULL"], NUM_STAGES=cfg["NUM_STAGES"], KW=cfg["KW"], num_warps=cfg["num_warps"],
        )  # fmt: skip
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


# Integer arguments at the benchmark shape [64, 3, 256, 256] (P = 192 planes), per block size.
_BENCH_P, _BENCH_HW = 64 * 3, 256


def _v1_values(b: int) -> dict:
    rows = (block_config(b)["BT"] // b) * b
    tiles = triton.cdiv(_BENCH_HW, rows)
    hw = _BENCH_HW
    return dict(H=hw, W=hw, R=rows, tiles_h=tiles, tiles_w=tiles, stride_xp=hw * hw, stride_xh=hw,
                stride_yp=hw * hw, stride_yh=hw)  # fmt: skip


def _v2_values(b: int) -> dict:
    cfg = v2_config(b, torch.float16)
    tiles = triton.cdiv(_BENCH_HW, cfg["R"])
    vals = _v1_values(b)
    vals.update(R=cfg["R"], tiles_h=tiles, tiles_w=tiles, num_tiles=_BENCH_P * tiles * tiles)
    return vals


def aot_specs() -> list[AOTSpec]:
    """Every configuration the blockwise launchers can choose on a GPU, per dtype.

    v1 (labels as measured): BT = 16 at b = 8 and BT = 32 at b = 32, with the integer arguments at the
    benchmark shape. v2: one kernel per (dtype, FULL): FULL at b = 8 (every b dividing 64 compiles alike),
    FULL=False at b = 24 (R = 48; the masked path for blocks that do not divide 64).
    """
    specs = []
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        name = DTYPE_NAME[dt]
        for b in (8, 32):
            cfg = block_config(b)
            sig = {"x_ptr": PTR_SIG[dt], "y_ptr": PTR_SIG[dt], "k_ptr": PTR_SIG[dt]}
            for arg in ("H", "W", "R", "tiles_h", "tiles_w", "stride_xp", "stride_xh", "stride_yp", "stride_yh"):
                sig[arg] = "i32"
            sig["BT"] = "constexpr"
            specs.append(AOTSpec(
                kernel=_dct2d_block_fwd_kernel, signature=sig, constexprs={"BT": cfg["BT"]},
                num_warps=cfg["num_warps"], label=f"dct2d blockwise-v1 {name} BT={cfg['BT']}",
                expect_tensor_cores=dt != torch.float32, op="blockwise", dtype=name, values=_v1_values(b),
                main=False,  # kept unchanged as measured: one tile per program, no pipelined loop
            ))  # fmt: skip
        for b in (8, 32, 24) if dt == torch.float32 else (8, 24):  # fp32: KW = 16 at b = 8, 64 at b = 32
            cfg = v2_config(b, dt)
            sig = {"x_ptr": PTR_SIG[dt], "y_ptr": PTR_SIG[dt], "k_ptr": PTR_SIG[dt]}
            for arg in ("H", "W", "R", "tiles_h", "tiles_w", "num_tiles",
                        "stride_xp", "stride_xh", "stride_yp", "stride_yh"):  # fmt: skip
                sig[arg] = "i32"
            consts = dict(TILE=cfg["TILE"], FULL=cfg["FULL"], NUM_STAGES=cfg["NUM_STAGES"], KW=cfg["KW"])
            sig.update(dict.fromkeys(consts, "constexpr"))
            specs.append(AOTSpec(
                kernel=_dct2d_block_v2_kernel, signature=sig, constexprs=consts, num_warps=cfg["num_warps"],
                num_stages=cfg["NUM_STAGES"], label=f"dct2d blockwise-v2 {name} FULL={cfg['FULL']} KW={cfg['KW']}",
                expect_tensor_cores=dt != torch.float32, op="blockwise", dtype=name, values=_v2_values(b),
                main=cfg["FULL"], wide_stores=cfg["FULL"],
            ))  # fmt: skip
    return specs
