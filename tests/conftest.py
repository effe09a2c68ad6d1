"""pytest's shared configuration: readable parameter ids, the gates behind the ``fused`` and
``cuda`` markers, and the ``dtype`` and ``backend`` fixtures (the lists they draw from, and
the gates themselves, are in tests/testing.py, which test modules import)."""

import pytest
import torch

from .testing import backends, dtypes, require_backend, require_cuda, require_fused


def pytest_make_parametrize_id(config, val, argname):
    """Readable test ids: float32 instead of dtype0."""
    if isinstance(val, torch.dtype):
        return str(val).replace("torch.", "")
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``@pytest.mark.fused`` (or ``pytestmark = pytest.mark.fused``): skip the test, or fail it
    with ODECORE_REQUIRE_EXTENSION=1, without the fused CPU kernels; ``cuda``: skip it without a
    GPU and the CUDA kernels."""
    if item.get_closest_marker("fused") is not None:
        require_fused()
    if item.get_closest_marker("cuda") is not None:
        require_cuda()


@pytest.fixture(params=dtypes)
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    """float32, then float64."""
    return request.param


@pytest.fixture(params=backends)
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend in turn, the fused one gated like ``require_backend``."""
    require_backend(request.param)
    return request.param
