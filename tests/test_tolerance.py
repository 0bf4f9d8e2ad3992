"""The shared tolerance rule (`spectralar_kernels.testing.assert_close_to_oracle`), machine-independently.

The attention backward at T = 1 has an exact-zero dq (one visible key: dS = P (dP - rowsum(dO * O)) = 0); on
one CPU the same-precision reference cancelled it exactly while the Triton kernel left 1.2e-7, and the rule
(2 x the reference's error + 1e-3 x max|oracle|) allowed 0. These cases reproduce that without depending on
which BLAS rounds how.
"""

import pytest
import torch

from spectralar_kernels.testing import ZERO_FLOOR_ULPS, assert_close_to_oracle, zero_floor


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_exact_zero_oracle_allows_an_fp32_residue(dtype):
    oracle = torch.zeros(2, 1, 2, 16, dtype=torch.float64)
    same = torch.zeros(oracle.shape, dtype=dtype)  # the reference cancelled exactly
    out = torch.full(oracle.shape, 1.2e-7).to(dtype)  # what the kernel left on the AMD machine
    assert_close_to_oracle(out, oracle, same, name="dq at T=1")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_exact_zero_oracle_still_catches_real_errors(dtype):
    oracle = torch.zeros(8, dtype=torch.float64)
    same = torch.zeros(8, dtype=dtype)
    out = torch.zeros(8, dtype=dtype)
    out[3] = 1e-3  # a wrong value (far above a few fp32 ulps, below one bf16 ulp of 1)
    with pytest.raises(AssertionError, match="ref err"):
        assert_close_to_oracle(out, oracle, same, name="wrong")


def test_floor_scales_with_the_magnitude_of_the_terms():
    assert zero_floor() == ZERO_FLOOR_ULPS * torch.finfo(torch.float32).eps
    assert zero_floor(100.0) == pytest.approx(100 * zero_floor())
    oracle = torch.zeros(4, dtype=torch.float64)
    out = torch.full((4,), 1e-4, dtype=torch.bfloat16)  # 1e-4: too much for unit terms, fine for terms of 100
    with pytest.raises(AssertionError):
        assert_close_to_oracle(out, oracle, torch.zeros(4, dtype=torch.bfloat16))
    assert_close_to_oracle(out, oracle, torch.zeros(4, dtype=torch.bfloat16), magnitude=100.0)


def test_nonzero_oracle_keeps_the_relative_rule():
    """Away from zero the floor changes nothing: one bf16 ulp off an exactly representable 1 still fails."""
    oracle = torch.ones(9, dtype=torch.float64)
    same = oracle.to(torch.bfloat16)  # exact: the reference errs by 0
    out = torch.full((9,), 1 + 2**-7, dtype=torch.bfloat16)
    with pytest.raises(AssertionError):
        assert_close_to_oracle(out, oracle, same)
