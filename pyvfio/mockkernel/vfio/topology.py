"""The machine the mock simulates: PCI functions in IOMMU groups, bound to drivers.

The topology lives in the VFIO state (groups, their devices and drivers, which decide a group's
viability); its sysfs view is written by the mock's host (:mod:`pyvfio.mockkernel.host`), the
one writer of the tree, so a rebind through the host's driver core and one through
:func:`bind_driver` meet the same rules (:func:`follow_rebind`).
"""

from __future__ import annotations

import errno
from typing import Any

from ..core import KernelError, MockKernel
from ..pci import make_e1000e, make_edu
from .core import NAME, DeviceEntry, MockIommuGroup, state

#: The x86 MSI window, reserved in every IOMMU group unless told otherwise.
X86_MSI_WINDOW = (0xFEE00000, 0xFEEFFFFF)


def _ident(sim: Any, attr: str, default: int) -> int:
    value = getattr(sim, attr, None)
    return int(value) if value is not None else default


def add_device(kernel: MockKernel, sim_device: Any, group: int, driver: str | None = "vfio-pci",
               *, reserved: list[tuple[int, int]] | None = None) -> DeviceEntry:
    """Plug ``sim_device`` (named by its BDF, ``sim_device.name``) into IOMMU group ``group``,
    bound to ``driver`` (None: unbound), and describe it in the host's sysfs.

    ``sim_device`` needs ``name``, ``vendor_id``, ``device_id``, ``class_code`` (24 bits).
    ``reserved`` sets the group's reserved IOVA windows when the group is new (default: the x86
    MSI window 0xfee00000-0xfeefffff).
    """
    st = state(kernel)
    name = str(sim_device.name)
    if name in st.devices:
        raise ValueError(f"mock topology: device {name} already present")
    g = st.groups.get(group)
    if g is None:
        g = MockIommuGroup(group, reserved=list(reserved if reserved is not None else [X86_MSI_WINDOW]))
        st.groups[group] = g
    entry = DeviceEntry(name, sim_device, g, driver)
    g.devices.append(entry)
    st.devices[name] = entry
    # no reset_method/reset: like QEMU's edu, the mock's devices have no reset method
    kernel.host.add_pci(
        name, _ident(sim_device, "vendor_id", 0xFFFF), _ident(sim_device, "device_id", 0xFFFF),
        class_code=_ident(sim_device, "class_code", 0), driver=driver, group=group,
        reset_method=None, subsystem_vendor=_ident(sim_device, "subsystem_vendor_id", 0x1AF4),
        subsystem_device=_ident(sim_device, "subsystem_id", 0x1100), reserved=g.reserved)
    return entry


def follow_rebind(kernel: MockKernel, name: str, driver: str | None) -> None:
    """The host's driver core moves ``name`` to ``driver``: refuse with EBUSY while the device is
    in use through VFIO, else follow (the group's viability changes with it)."""
    entry = state(kernel).devices.get(name)
    if entry is None:
        return
    g = entry.group
    if (driver != entry.driver and g.vfio is not None and g.vfio.device_files
            and entry.driver == "vfio-pci"):
        raise OSError(errno.EBUSY, f"{name} is in use through VFIO", kernel.host.dev_path(name))
    entry.driver = driver


def bind_driver(kernel: MockKernel, name: str, driver: str | None) -> None:
    """Rebind a device (what driver_override + drivers_probe or unbind do); EBUSY while in use."""
    if name not in state(kernel).devices:
        raise KeyError(name)
    try:
        kernel.host.rebind(name, driver)
    except OSError as e:
        raise KernelError(e.errno or errno.EIO, str(e.strerror)) from None


def interrupt_remapping(kernel: MockKernel) -> bool:
    """Every IOMMU group of the machine has interrupt remapping."""
    return all(g.interrupt_remapping for g in state(kernel).groups.values())


def default_machine(kernel: MockKernel) -> None:
    """The machine a plain ``MockKernel()`` simulates (mirrors the x86 test guest):

    * 0000:00:03.0 — edu (1234:11e8) in IOMMU group 3, bound to vfio-pci;
    * 0000:00:02.0 — an e1000e-like NIC (8086:10d3) in IOMMU group 2, on its host driver.
    """
    add_device(kernel, make_edu(kernel, "0000:00:03.0"), group=3, driver="vfio-pci")
    add_device(kernel, make_e1000e(kernel, "0000:00:02.0"), group=2, driver="e1000e")


def shutdown(kernel: MockKernel) -> None:
    """Release what the simulated devices hold (BAR memfds...): the machine is powered off."""
    st = kernel.state.get(NAME)
    if st is None:
        return
    for entry in st.devices.values():
        close = getattr(entry.sim, "close", None)
        if callable(close):
            close()


__all__ = ["add_device", "bind_driver", "follow_rebind", "interrupt_remapping", "default_machine",
           "shutdown", "X86_MSI_WINDOW"]
