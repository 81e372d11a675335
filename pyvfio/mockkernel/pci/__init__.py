"""Simulated PCI devices and the vfio-pci device file of the mock kernel.

* :mod:`.device`: the PCI model (config space, BARs as memfds, interrupts, DMA through the group);
* :mod:`.edu` and :mod:`.e1000e`: the two simulated devices;
* :mod:`.vfio_pci`: the file behind a VFIO device fd (VFIO_DEVICE_* ioctls, pread/pwrite, mmap);
* :mod:`.dmalog`: device DMA logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_*).
"""

from __future__ import annotations

from typing import Callable

from .device import Bar, SimPciDevice, parse_bdf
from .e1000e import E1000e, make_e1000e
from .edu import EDU_DMA_SIZE, EDU_DMA_START, EDU_IDENT, Edu, make_edu
from .vfio_pci import VfioPciDeviceFile, open_device_file

#: The simulated device kinds by name (what the test topology builds).
DEVICE_KINDS: dict[str, Callable[..., SimPciDevice]] = {"edu": make_edu, "e1000e": make_e1000e}

__all__ = ["SimPciDevice", "Bar", "Edu", "E1000e", "VfioPciDeviceFile", "open_device_file",
           "make_edu", "make_e1000e", "parse_bdf", "EDU_IDENT", "EDU_DMA_START", "EDU_DMA_SIZE",
           "DEVICE_KINDS"]
