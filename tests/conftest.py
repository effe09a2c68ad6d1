import torch


def pytest_make_parametrize_id(config, val, argname):
    """Readable test ids: float32 instead of dtype0."""
    if isinstance(val, torch.dtype):
        return str(val).replace("torch.", "")
    return None
