"""Fixtures of the tests/kvm/ files: every test using them runs on the backends its module's
``pytestmark = pytest.mark.backends("mock", "kvm")`` names (tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest
from scenarios import Env
from scenarios.kvm import make_backend

from pyvfio.kvm import Kvm


@pytest.fixture
def mock_env() -> Env:
    """A new mock kernel per test (not conftest's ``be``: no VFIO machine to power off)."""
    return Env("mock", lambda: make_backend("mock"))


@pytest.fixture
def backend(env: Env) -> Any:
    return env.backend()


@pytest.fixture
def kvm(backend: Any):
    k = Kvm(backend=backend)
    yield k
    k.close()


@pytest.fixture
def vm(kvm: Kvm):
    v = kvm.create_vm()
    yield v
    v.close()
