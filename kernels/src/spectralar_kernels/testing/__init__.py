"""Checking a kernel against its reference: the tolerance rule the tests and the benchmarks share.

fp32 paths are compared against a float64 oracle with fixed tolerances. Low-precision paths may err
at most 2x the error of the same-precision PyTorch reference against that oracle (flash-attention's
rule), plus a small absolute floor for outputs that are exact zeros.

`spectralar_kernels.testing.aot` compiles every shipped Triton kernel ahead of time for sm_80 / sm_90
(no GPU needed) and checks its resources; it imports triton only when it compiles.
"""

import torch


def max_err(out: torch.Tensor, oracle: torch.Tensor) -> float:
    return (out.double() - oracle.double()).abs().max().item()


def assert_close_to_oracle(
    out: torch.Tensor,
    oracle: torch.Tensor,
    same_precision_ref: torch.Tensor | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    name: str = "",
) -> float:
    """Assert `out` matches the float64 `oracle`; returns the max abs error.

    fp32 `out`: |out - oracle| <= atol + rtol * |oracle| (scale atol with the problem's magnitude).
    fp16/bf16 `out`: max error <= 2 * max error of `same_precision_ref` + 1e-3 * max|oracle|.
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
        floor = 1e-3 * oracle.double().abs().max().item()
        assert err <= 2 * ref_err + floor, f"{name}: err {err:.3e} > 2 x ref err {ref_err:.3e} + {floor:.1e}"
    return err


def nan_like(t: torch.Tensor) -> torch.Tensor:
    """A fresh output poisoned with NaN, so an element a kernel never writes fails the comparison."""
    return torch.full_like(t, float("nan"))
