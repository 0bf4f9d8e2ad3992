"""spectralar_kernels: fused kernels for spectral autoregressive image models.

Every op has a plain-PyTorch reference (`<op>/ref.py`: the CPU path, test oracle and benchmark
baseline), a Triton implementation (`<op>/triton.py`) and one public function that validates its
arguments and dispatches (see `_common.choose_backend`). Importing this package needs neither a
GPU nor triton.
"""

from .attention import attention, attention_with_kvcache
from .dct import dct2d, idct2d
from .subimages import spectral_subimages
from .vq import vq_nearest
from .windows import spectral_windows

__all__ = [
    "attention",
    "attention_with_kvcache",
    "dct2d",
    "idct2d",
    "spectral_subimages",
    "spectral_windows",
    "vq_nearest",
]
__version__ = "0.1.0"
