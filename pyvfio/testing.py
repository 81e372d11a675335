"""Test helpers: a mock machine with devices, built through one topology API.

Nothing in the library imports this module; tests, examples and tools do::

    >>> from pyvfio.seam import MockBackend
    >>> from pyvfio.testing import machine
    >>> be = MockBackend()                      # the default machine: edu in group 3, a NIC in 2
    >>> m = machine(be).add_edu("0000:00:04.0", group=4)
    >>> m.group(4).viable, m.device("0000:00:04.0").vendor_id == 0x1234
    (True, True)
    >>> m.shutdown()

* :func:`machine`: the topology of a mock backend (add simulated devices, rebind them, look at
  groups, the task, dmesg, the files behind fds, the IOMMU behind a container);
* :func:`power_backend`: a mock shaped like the POWER9 pseries test guest (sPAPR TCE only);
* :func:`standalone_device`: a VFIO device on a bare mock kernel, without IOMMU;
* :class:`FakeHost`, :func:`sample_host`, :func:`limits_text`: hand-made host trees for
  discovery, binding and doctor tests.
"""

from __future__ import annotations

from typing import Any

from .mockkernel import MockFile, MockKernel
from .mockkernel import iommufd as _iommufd
from .mockkernel import kvm as _kvm
from .mockkernel import vfio as _vfio
from .mockkernel.host import FakeHost, limits_text, sample_host
from .mockkernel.pci import DEVICE_KINDS, E1000e, Edu, SimPciDevice, open_device_file
from .mockkernel.pci import dmalog as _dmalog
from .mockkernel.task import MockTask
from .mockkernel.vfio import dirty as _dirty
from .mockkernel.vfio.spapr import POWER_EDU_BDF, POWER_EDU_GROUP, power_kernel
from .seam.mock import MockBackend
from .vfio.device import Device


class Machine:
    """The topology of one mock kernel (``backend.kernel``); adders return ``self`` for chaining."""

    def __init__(self, backend: MockBackend) -> None:
        self.backend = backend
        self.kernel: MockKernel = backend.kernel

    # -- building ---------------------------------------------------------------------------------
    def add(self, kind: str, bdf: str, *, group: int, driver: str | None,
            reserved: list[tuple[int, int]] | None = None, **kw: Any) -> "Machine":
        """Plug a simulated device of ``kind`` ("edu", "e1000e") at ``bdf`` into IOMMU ``group``."""
        sim = DEVICE_KINDS[kind](self.kernel, bdf, **kw)
        _vfio.add_device(self.kernel, sim, group=group, driver=driver, reserved=reserved)
        return self

    def add_edu(self, bdf: str = "0000:00:03.0", *, group: int, driver: str | None = "vfio-pci",
                reserved: list[tuple[int, int]] | None = None, **kw: Any) -> "Machine":
        """QEMU's edu at ``bdf``; ``kw`` as :class:`~pyvfio.mockkernel.pci.Edu` takes them."""
        return self.add("edu", bdf, group=group, driver=driver, reserved=reserved, **kw)

    def add_e1000e(self, bdf: str = "0000:00:02.0", *, group: int, driver: str | None = "e1000e",
                   reserved: list[tuple[int, int]] | None = None, **kw: Any) -> "Machine":
        """An e1000e-like NIC at ``bdf`` (on its host driver by default)."""
        return self.add("e1000e", bdf, group=group, driver=driver, reserved=reserved, **kw)

    def bind(self, bdf: str, driver: str | None) -> "Machine":
        """Move ``bdf`` to ``driver`` (None: unbound), as the driver core would; EBUSY in use."""
        _vfio.bind_driver(self.kernel, bdf, driver)
        return self

    def sync_cdevs(self) -> dict[str, int]:
        """Give the vfio-pci devices added since the kernel started their iommufd cdevs."""
        return _iommufd.sync_cdevs(self.kernel)

    def shutdown(self) -> None:
        """Power the machine off (closes the simulated devices' BAR memfds)."""
        _vfio.shutdown(self.kernel)

    # -- looking --------------------------------------------------------------------------------
    def device(self, bdf: str) -> Any:
        """The simulated device at ``bdf``."""
        return _vfio.state(self.kernel).devices[bdf].sim

    def entry(self, bdf: str) -> _vfio.DeviceEntry:
        """The topology entry of ``bdf`` (its driver, its group)."""
        return _vfio.state(self.kernel).devices[bdf]

    def group(self, number: int) -> _vfio.MockIommuGroup:
        """IOMMU group ``number`` (its devices, reserved windows, interrupt remapping, VFIO file)."""
        return _vfio.state(self.kernel).groups[number]

    @property
    def task(self) -> MockTask:
        """The calling task as the mock accounts it (pinned bytes, limit overrides)."""
        return _vfio.state(self.kernel).task

    @property
    def iommufd(self) -> Any:
        """iommufd's per-kernel state (pinned_vm, bound devices, knobs such as dirty_tracking)."""
        return _iommufd.state(self.kernel)

    @property
    def kvm_config(self) -> Any:
        """KVM's configuration (slots, address spaces, caps) to model another architecture."""
        return _kvm.state(self.kernel).config

    @property
    def dmesg(self) -> list[str]:
        return self.kernel.dmesg

    @property
    def files(self) -> dict[int, MockFile]:
        """The mock kernel's open files by fd."""
        return self.kernel.files

    def file(self, fd: int) -> MockFile:
        """The mock file behind ``fd`` (an object's ``fileno()``)."""
        return self.kernel.files[fd]

    def iommu(self, container: Any) -> Any:
        """The IOMMU driver object behind a container (``container.fileno()``), or None."""
        return getattr(self.file(container.fileno()), "iommu", None)

    def write_param(self, module: str, name: str, value: str) -> "Machine":
        """Set a module parameter in the machine's sysfs (``allow_unsafe_interrupts``...)."""
        _vfio.state(self.kernel).write_param(module, name, value)
        return self

    # -- dirty tracking -------------------------------------------------------------------------
    def set_dirty_semantics(self, semantics: str) -> "Machine":
        """type1 dirty reports: "exact" (the pages DMA wrote) or "pinned" (every mapped page)."""
        _dirty.set_semantics(self.kernel, semantics)
        return self

    def enable_device_logging(self, bdf: str, **kw: Any) -> Any:
        """Give the device at ``bdf`` a DMA logger (VFIO_DEVICE_FEATURE_DMA_LOGGING_*)."""
        return _dmalog.enable_device_logging(self.device(bdf), **kw)

    @staticmethod
    def mark_dirty(iommu: Any, iova: int, size: int) -> None:
        """What a device write through ``iommu`` (a type1 driver object) marks dirty."""
        _dirty.mark(iommu, iova, size)


def machine(backend: MockBackend) -> Machine:
    """The topology API of ``backend``'s mock kernel."""
    return Machine(backend)


def power_backend() -> MockBackend:
    """A mock backend shaped like the POWER9 pseries test guest: VFIO with only the sPAPR TCE
    IOMMU, edu at :data:`POWER_EDU_BDF` in group :data:`POWER_EDU_GROUP` bound to vfio-pci."""
    return MockBackend(power_kernel())


def bare_backend() -> MockBackend:
    """A mock backend on a kernel without subsystems (no VFIO, no KVM): for device-layer tests."""
    return MockBackend(MockKernel(subsystems=[]))


def standalone_device(kind: str = "edu", *, backend: MockBackend | None = None, **kw: Any) -> Device:
    """A :class:`pyvfio.vfio.device.Device` on a bare mock kernel with one simulated device and
    no IOMMU (DMA faults): for examples and unit tests of the device layer alone.

    ``backend``: a MockBackend to use (default: a new one on a kernel without subsystems).
    """
    be = backend if backend is not None else bare_backend()
    sim = DEVICE_KINDS[kind](be.kernel, **kw)
    fd = be.kernel.install(open_device_file(be.kernel, None, sim, owns_device=True))
    be.label(fd, f"vfio-device:{sim.name}")
    return Device(fd, name=sim.name, backend=be)


__all__ = ["Machine", "machine", "power_backend", "bare_backend", "standalone_device", "FakeHost",
           "sample_host", "limits_text", "POWER_EDU_BDF", "POWER_EDU_GROUP", "Edu", "E1000e",
           "SimPciDevice"]
