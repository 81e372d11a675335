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


__all__ = ["pci_dev_path", "pci_driver_of"]
