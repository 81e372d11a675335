"""Root test configuration: the package's docstring examples run as doctests on the mock kernel.

``--doctest-modules`` (pyproject.toml) collects every example under pyvfio/. Each doctest sees
``PYVFIO_BACKEND=mock`` and a fresh mock kernel, so an example that takes the default backend
never reaches the host's /dev/vfio or /dev/kvm, and no example sees another's devices or maps.
"""

from __future__ import annotations

import pytest
from _pytest.doctest import DoctestItem

import pyvfio.seam


@pytest.fixture(autouse=True)
def _doctest_on_the_mock(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if isinstance(request.node, DoctestItem):
        monkeypatch.setenv("PYVFIO_BACKEND", "mock")
        monkeypatch.setattr(pyvfio.seam, "_singletons", {})
