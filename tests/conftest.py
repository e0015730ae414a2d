"""Process-wide state some libraries keep between tests, reset so that no test sees another's."""

import sys

import pytest


@pytest.fixture(autouse=True)
def _reset_bitsandbytes_overrides():
    """The HF Trainer registers 32-bit states for nn.Embedding weights with bitsandbytes'
    GlobalOptimManager, keyed by id(parameter); once that model is gone the ids are reused by the
    next test's parameters, whose 8-bit optimizer then keeps some states in 32 bits."""
    yield
    bnb = sys.modules.get("bitsandbytes")
    if bnb is not None:
        bnb.optim.GlobalOptimManager.get_instance().initialize()
