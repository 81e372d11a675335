"""Paths and reads of the PCI part of a sysfs tree (the machine's /sys or a fake one)."""

from __future__ import annotations

import os


def pci_dev_path(sys_root: str, bdf: str, *rest: str) -> str:
    """``<sys>/bus/pci/devices/<bdf>/<rest...>``.

    >>> pci_dev_path("/sys", "0000:00:03.0", "driver")
    '/sys/bus/pci/devices/0000:00:03.0/driver'
    """
    return os.path.join(sys_root, "bus", "pci", "devices", bdf, *rest)


def pci_driver_of(sys_root: str, bdf: str) -> str | None:
    """The driver bound to ``bdf`` (the ``driver`` link's name), None when unbound or absent."""
    try:
        return os.path.basename(os.readlink(pci_dev_path(sys_root, bdf, "driver")))
    except OSError:
        return None


def vfio_cdev_names(sys_root: str, bdf: str) -> list[str]:
    """The VFIO cdev names of ``bdf`` (``vfioN`` under its ``vfio-dev/``; /dev/vfio/devices/vfioN),
    sorted; empty when it is not bound to vfio-pci or the kernel has no VFIO_DEVICE_CDEV."""
    try:
        return sorted(n for n in os.listdir(pci_dev_path(sys_root, bdf, "vfio-dev")) if n.startswith("vfio"))
    except OSError:
        return []


def iommu_group_devices(sys_root: str, number: int) -> list[str]:
    """The BDFs of IOMMU group ``number`` (``kernel/iommu_groups/N/devices``), sorted."""
    try:
        return sorted(os.listdir(os.path.join(sys_root, "kernel", "iommu_groups", str(number), "devices")))
    except OSError:
        return []


__all__ = ["pci_dev_path", "pci_driver_of", "vfio_cdev_names", "iommu_group_devices"]
