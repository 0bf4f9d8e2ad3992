"""`LinearDCT`: a 1-D DCT as an `nn.Linear` layer, as torch-dct users know it."""

from __future__ import annotations

import torch
from torch import nn

from . import ref

__all__ = ["LinearDCT"]

# torch-dct's four names, plus every scipy type in both directions ("dct" = "dct2", "idct" = "idct2").
_TYPES = {"dct": (2, False), "idct": (2, True), **{f"dct{t}": (t, False) for t in (1, 2, 3, 4)},
          **{f"idct{t}": (t, True) for t in (1, 2, 3, 4)}}  # fmt: skip


class LinearDCT(nn.Linear):
    """The 1-D transform along the last dim as a matrix product: `LinearDCT(n, "dct", norm="ortho")(x)` equals
    `dct(x, norm="ortho")` for x [..., n] (torch-dct's `LinearDCT(in_features, type, norm=None, bias=False)`).

    Args:
        in_features: n, the length of the last dim (>= 1; >= 2 for the DCT-I).
        type: torch-dct's "dct", "idct", "dct1", "idct1", or "dct2" / "idct2", "dct3", "idct3", "dct4", "idct4".
        norm: scipy's (None = "backward", "ortho", "forward"), for every type: torch-dct ignores it for "dct1" /
            "idct1" (always unnormalised, as None here).
        bias: add a (learnable, zero-initialised) bias, as nn.Linear does.
    The weight [n, n] is fixed (requires_grad=False), in the default dtype; `.to()` / `.half()` move it like any
    parameter. The product runs as one GEMM: the fast path for short lengths and batched vectors on a GPU.
    """

    def __init__(self, in_features: int, type: str, norm: str | None = None, bias: bool = False):  # noqa: A002
        if type not in _TYPES:
            raise ValueError(f"type must be one of {sorted(_TYPES)}, got {type!r}")
        if norm not in (None, *ref.NORMS):
            raise ValueError(f"norm must be None, 'backward', 'ortho' or 'forward', got {norm!r}")
        if _TYPES[type][0] == 1 and in_features < 2:
            raise ValueError(f"the DCT-I needs in_features >= 2, got {in_features}")
        self.type, self.norm = type, norm
        super().__init__(in_features, in_features, bias=bias)

    def reset_parameters(self) -> None:
        """Set the weight to the transform's matrix (and a bias to 0), as nn.Linear calls it."""
        t, inverse = _TYPES[self.type]
        norm = self.norm or "backward"
        matrix = ref.transform_matrix(t, self.in_features, norm, norm == "ortho", inverse)  # float64
        with torch.no_grad():
            self.weight.copy_(matrix.to(self.weight.dtype))
            if self.bias is not None:
                self.bias.zero_()
        self.weight.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"{self.in_features}, type={self.type!r}, norm={self.norm!r}, bias={self.bias is not None}"
