"""spectralar_kernels: fused kernels for spectral autoregressive image models.

Every op has a plain-PyTorch reference (`<op>/ref.py`: the CPU path, test oracle and benchmark
baseline), Triton implementations (`<op>/triton.py` and siblings) and one public function that
validates its arguments and dispatches (`_common.choose_kernel`: on CUDA only to kernels that the
measured-decisions table `_dispatch.py` shows faster than the reference). Importing this package
needs neither a GPU nor triton.
"""

from ._common import use_backend
from .attn import (
    attention,
    attention_with_kvcache,
    flash_attn_func,
    flash_attn_with_kvcache,
    scaled_dot_product_attention,
)
from .subimages import spectral_subimages
from .transforms import LinearDCT, dct, dct2d, dctn, idct, idct2d, idctn
from .vq import vq_nearest
from .windows import spectral_windows

__all__ = [
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
__version__ = "0.2.0"
