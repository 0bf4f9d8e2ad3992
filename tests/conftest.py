import pytest
import torch

from spectralar_kernels import use_backend


@pytest.fixture(params=["ref", "triton"])
def backend(request):
    """Run a test once through the reference and once through the Triton kernel.

    On a machine without CUDA the root conftest has set TRITON_INTERPRET=1, so "triton" executes
    the real kernels under the interpreter (keep shapes tiny there).
    """
    with use_backend(request.param):
        yield request.param


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module: on a crowded 2-core machine two OpenMP threads wait on each other far
    longer than they save."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
