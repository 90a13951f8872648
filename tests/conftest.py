"""Fixtures the trainer tests share."""

import pytest
from accelerate.state import AcceleratorState, GradientState
from trainer_runs import write_idx_fashion_mnist


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Fashion-MNIST's IDX files with 512 training and 256 test images of noise (a module may define its own size)."""
    return write_idx_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture
def fresh_accelerate():
    """Trainers run in this process here: each starts from a fresh Accelerate state."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
