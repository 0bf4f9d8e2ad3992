"""Checking a kernel against its reference: the tolerance rule the tests and the benchmarks share.

fp32 paths are compared against a float64 oracle with fixed tolerances. Low-precision paths may err
at most 2x the error of the same-precision PyTorch reference against that oracle (flash-attention's
rule), plus an absolute floor for outputs whose exact value is zero (`zero_floor`).

Why the floor: "2x the reference's error" assumes the reference errs. Where the exact result is 0 because
terms cancel (the attention backward at T = 1: one visible key, so P = 1 and dS = P (dP - rowsum(dO * O))
is 0 in exact arithmetic), the same-precision reference may cancel them exactly and err by 0, while a kernel
accumulating in fp32 in another order leaves a residue of a few fp32 ulps of the terms (1.2e-7 on an AMD
CPU, 0 on the Intel one the tests were written on). Neither dtype can resolve a value below one ulp of the
terms it was summed from, so the floor is `ZERO_FLOOR_ULPS` ulps of fp32 (the accumulation dtype of every
kernel) times `magnitude`, the size of those terms: 7.6e-6 for the unit-scale inputs the tests use, far
below the 1e-3 relative part of the rule and below one bf16/fp16 ulp of a unit value (7.8e-3 / 9.8e-4).

`spectralar_kernels.testing.aot` compiles every shipped Triton kernel ahead of time for sm_80 / sm_90
(no GPU needed) and checks its resources; it imports triton only when it compiles.
"""

import torch

__all__ = ["ZERO_FLOOR_ULPS", "assert_close_to_oracle", "max_err", "nan_like", "zero_floor"]

# fp32 ulps of the terms an exact zero may be left with: a cancellation of O(1) terms over sums of up to a few
# hundred products (head dims and sequence lengths the tests use) in a different order than the reference.
ZERO_FLOOR_ULPS = 64


def zero_floor(magnitude: float = 1.0) -> float:
    """Absolute error allowed on an output whose exact value is 0: `ZERO_FLOOR_ULPS` fp32 ulps of `magnitude`."""
    return ZERO_FLOOR_ULPS * torch.finfo(torch.float32).eps * magnitude


def max_err(out: torch.Tensor, oracle: torch.Tensor) -> float:
    return (out.double() - oracle.double()).abs().max().item()


def assert_close_to_oracle(
    out: torch.Tensor,
    oracle: torch.Tensor,
    same_precision_ref: torch.Tensor | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    name: str = "",
    magnitude: float = 1.0,
) -> float:
    """Assert `out` matches the float64 `oracle`; returns the max abs error.

    fp32 `out`: |out - oracle| <= atol + rtol * |oracle| (scale atol with the problem's magnitude).
    fp16/bf16 `out`: max error <= 2 * max error of `same_precision_ref` + max(1e-3 * max|oracle|,
    zero_floor(magnitude)). `magnitude`: the size of the inputs the output is summed from (1 for unit-variance
    inputs); it only matters where the oracle is (near) zero.
    """
    assert out.shape == oracle.shape, f"{name}: shape {tuple(out.shape)} != {tuple(oracle.shape)}"
    assert not torch.isnan(out).any(), f"{name}: NaN in output (an element was never written?)"
    err = max_err(out, oracle)
    if out.dtype == torch.float32 or out.dtype == torch.float64:
        bound = (atol + rtol * oracle.double().abs()).cpu()
        bad = (out.double().cpu() - oracle.double().cpu()).abs() > bound
        assert not bad.any(), f"{name}: max err {err:.3e} exceeds atol={atol} rtol={rtol}"
    else:
        assert same_precision_ref is not None, "low-precision checks need the same-precision reference"
        ref_err = max_err(same_precision_ref, oracle)
        floor = max(1e-3 * oracle.double().abs().max().item(), zero_floor(magnitude))
        assert err <= 2 * ref_err + floor, f"{name}: err {err:.3e} > 2 x ref err {ref_err:.3e} + {floor:.1e}"
    return err


def nan_like(t: torch.Tensor) -> torch.Tensor:
    """A fresh output poisoned with NaN, so an element a kernel never writes fails the comparison."""
    return torch.full_like(t, float("nan"))
