"""spectralar: Triton-accelerated SpectralAR (arXiv 2506.10962).

Two import packages: `spectralar` (models, training, sampling, CLIs, the bundled model) and
`spectralar_kernels` (fused kernels, source folder `kernels/`; the bare name `kernels` belongs to an
unrelated PyPI project).
"""

from setuptools import setup

KERNEL_PACKAGES = ["dct", "windows", "subimages", "vq", "attention"]

setup(
    name="spectralar",
    version="0.1.0",
    description="Spectral autoregressive image generation with fused Triton kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["spectralar", "spectralar_kernels"] + [f"spectralar_kernels.{p}" for p in KERNEL_PACKAGES],
    package_dir={"spectralar": "spectralar", "spectralar_kernels": "kernels"},
    package_data={"spectralar": ["pretrained/*/*/*.json", "pretrained/*/*/*.safetensors"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.3",
        "numpy",
        "pillow",
        "safetensors",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        # triton comes with CUDA builds of torch; CPU users need it only to run the kernels under
        # the interpreter (the tests do).
        "triton": ["triton>=3.6,<3.8"],
        "test": ["pytest", "pytest-benchmark", "scipy", "triton>=3.6,<3.8", "ruff"],
        "flash": ["flash-attn>=2.5"],
        "fid": ["torch-fidelity"],
    },
)
