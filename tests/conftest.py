import pytest

from spectralar_kernels import use_backend


@pytest.fixture(params=["ref", "triton"])
def backend(request):
    """Run a test once through the reference and once through the Triton kernel.

    On a machine without CUDA the root conftest has set TRITON_INTERPRET=1, so "triton" executes
    the real kernels under the interpreter (keep shapes tiny there).
    """
    with use_backend(request.param):
        yield request.param
