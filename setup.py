"""spectralar: Triton-accelerated SpectralAR (arXiv 2506.10962).

Metadata and dependencies live in pyproject.toml. This file adds the kernels to the same install:
`spectralar_kernels` lives in its own src-layout project, kernels/src/spectralar_kernels/ (the folder is
the import name; the bare name `kernels` belongs to an unrelated PyPI project), which also installs on
its own with `pip install ./kernels`. Both package trees are discovered, never listed by hand.
"""

from setuptools import find_packages, setup

KERNELS_SRC = "kernels/src"

setup(
    packages=find_packages(include=["spectralar", "spectralar.*"]) + find_packages(KERNELS_SRC),
    package_dir={"spectralar_kernels": f"{KERNELS_SRC}/spectralar_kernels"},
    package_data={"spectralar": ["pretrained/*/*/*.json", "pretrained/*/*/*.safetensors", "demo_page/*"],
                  "spectralar_kernels": ["measured.json"]},  # the measured decisions `auto` reads
    include_package_data=True,
)
