"""spectralar: Triton-accelerated SpectralAR (arXiv 2506.10962).

Metadata and dependencies live in pyproject.toml. This file only maps the two import packages to
their folders: `spectralar` (models, training, sampling, CLIs, the bundled model) and
`spectralar_kernels` (fused kernels, source folder `kernels/`; the bare name `kernels` belongs to an
unrelated PyPI project). The kernels also install on their own: `pip install ./kernels`.
"""

from setuptools import setup

KERNEL_PACKAGES = ["dct", "windows", "subimages", "vq", "attention", "testing"]

setup(
    packages=["spectralar", "spectralar_kernels"] + [f"spectralar_kernels.{p}" for p in KERNEL_PACKAGES],
    package_dir={"spectralar": "spectralar", "spectralar_kernels": "kernels"},
    package_data={"spectralar": ["pretrained/*/*/*.json", "pretrained/*/*/*.safetensors"]},
    include_package_data=True,
)
