"""Root pytest config: on a machine without CUDA, run Triton kernels under the interpreter.

TRITON_INTERPRET must be set before any module that defines a @triton.jit kernel is imported, which
is why this lives in the root conftest (loaded before tests/ and bench/ are collected).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _gradient_mode_left_on():
    """Fail the test that leaves its thread without gradients (a no_grad or inference_mode context entered and
    never left, e.g. around a generator's yield): otherwise every later test that trains fails instead."""
    yield
    if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("this test left gradients disabled in its thread (a no_grad/inference_mode context never exited)")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a real CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds on 2 CPU cores")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    import pytest

    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
