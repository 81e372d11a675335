"""The mock kernel: kernel behaviour (state, rules, errnos) behind the seam, in process.

Each subsystem module defines ``install(kernel)``; :func:`default_subsystems` lists them. Owners
add their module here when it lands.
"""

from __future__ import annotations

from typing import Any

from .core import KernelError, MockFile, MockKernel, handles


def default_subsystems() -> list[Any]:
    """The subsystems a default MockKernel installs (import on demand, no cycles)."""
    import importlib

    names: list[str] = [
        "pyvfio.mockkernel.vfio",
        "pyvfio.mockkernel.type1",
        "pyvfio.mockkernel.kvm",
        "pyvfio.mockkernel.iommufd",
    ]
    return [importlib.import_module(n) for n in names]


__all__ = ["KernelError", "MockFile", "MockKernel", "handles", "default_subsystems"]
