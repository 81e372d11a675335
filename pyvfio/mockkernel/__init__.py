"""The mock kernel: kernel behaviour (state, rules, errnos) behind the seam, in process.

It stands beside the real kernel, below everything else of pyvfio: it imports only the uAPI
bindings, the request numbers, the errors and the small utilities, never the kernel objects or
the seam above it.

* :mod:`.core`: files, fds, routes, dispatch by request number; the :class:`MockKernel`;
* :mod:`.host`: the machine's /sys + /proc + /dev tree and its driver core (the only sysfs writer);
* :mod:`.memory`, :mod:`.task`, :mod:`.bitmap`: user memory, the task's locked/pinned memory,
  dirty bitmaps as user space receives them;
* subsystems, each with ``install(kernel)``: :mod:`.vfio` (containers, groups, the topology),
  :mod:`.vfio.type1`, :mod:`.vfio.spapr`, :mod:`.iommufd`, :mod:`.kvm`; the simulated PCI
  devices and the vfio-pci device file in :mod:`.pci`.
"""

from __future__ import annotations

from typing import Any

from . import iommufd, kvm, vfio
from .core import DEFAULT_SUBSYSTEMS, KernelError, MockFile, MockKernel, handles
from .vfio import type1

DEFAULT_SUBSYSTEMS[:] = [vfio, type1, kvm, iommufd]


def default_subsystems() -> list[Any]:
    """The subsystems a default MockKernel installs."""
    return list(DEFAULT_SUBSYSTEMS)


__all__ = ["KernelError", "MockFile", "MockKernel", "handles", "default_subsystems", "DEFAULT_SUBSYSTEMS"]
