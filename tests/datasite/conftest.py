"""Fixtures shared by the datasite tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """The CI machine's cores are shared: a second OpenMP thread mostly waits for a busy core
    (measured 5-10x slower under load), so tests that train run torch single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
