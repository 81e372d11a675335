"""The syscall seam: every kernel interaction of pyvfio goes through a :class:`Backend`.

Two implementations share this protocol:

* ``real`` (:class:`pyvfio.seam.real.RealBackend`): libc through cffi. ``ioctl`` returns the
  ioctl's own return value (a new fd for VFIO_GROUP_GET_DEVICE_FD or KVM_CREATE_VM).
* ``mock`` (:class:`pyvfio.seam.mock.MockBackend`): an in-process kernel that receives the very
  same packed structs, decodes them with the same ``ffi`` and answers with the kernel's results
  and errnos; unknown requests get ENOTTY like the kernel.

The machine behind a backend (its /sys, /proc, /dev, driver core and kernel log) is
``backend.host`` (:class:`pyvfio.seam.host.Host`).

Objects take ``backend=`` (an instance or ``"real"``/``"mock"``); the default comes from the
environment variable ``PYVFIO_BACKEND`` (``real`` when unset).
"""

from __future__ import annotations

import os

from ..errors import ArgumentError
from .base import O_RDWR_CLOEXEC, Backend, request_name
from .host import Host
from .mock import MockBackend
from .real import RealBackend

_singletons: dict[str, Backend] = {}


def get_backend(backend: "Backend | str | None" = None) -> Backend:
    """Resolve ``backend`` (instance, name, or None for ``$PYVFIO_BACKEND``/real) to a Backend.

    Named backends are process-wide singletons; build a fresh ``MockBackend()`` for an isolated
    mock kernel (what the tests do).
    """
    if backend is not None and not isinstance(backend, str):
        return backend
    name = backend or os.environ.get("PYVFIO_BACKEND", "real")
    if name not in _singletons:
        if name == "real":
            _singletons[name] = RealBackend()
        elif name == "mock":
            _singletons[name] = MockBackend()
        else:
            raise ArgumentError(f"unknown backend {name!r}: use 'real' or 'mock'")
    return _singletons[name]


def new_backend(name: str) -> Backend:
    """A fresh backend by name: a new mock kernel for "mock", the real kernel for "real"."""
    if name == "mock":
        return MockBackend()
    return get_backend(name)


__all__ = ["Backend", "Host", "get_backend", "new_backend", "request_name", "O_RDWR_CLOEXEC",
           "RealBackend", "MockBackend"]
