"""PCI addresses (``[DDDD:]BB:DD.F``) as the kernel names them, and PCI driver names."""

from __future__ import annotations

import re

from ..errors import ArgumentError

#: ``[domain:]bus:device.function``; the domain may have 4 to 8 hex digits.
BDF_RX = re.compile(r"^(?:([0-9a-fA-F]{4,8}):)?([0-9a-fA-F]{2}):([0-1][0-9a-fA-F])\.([0-7])$")


class InvalidBdfError(ArgumentError):
    """A PCI address is not of the form ``[DDDD:]BB:DD.F``."""


def is_bdf(name: str) -> bool:
    """True when ``name`` is a PCI address (``0000:00:03.0`` or ``00:03.0``)."""
    return isinstance(name, str) and BDF_RX.match(name.strip()) is not None


def normalize_bdf(bdf: str) -> str:
    """``bdf`` as the kernel names it (``0000:00:03.0``); accepts ``00:03.0`` too.

    >>> normalize_bdf("00:1F.7")
    '0000:00:1f.7'

    Raises :class:`InvalidBdfError` (an ArgumentError) for anything else.
    """
    m = BDF_RX.match(bdf.strip()) if isinstance(bdf, str) else None
    if not m:
        raise InvalidBdfError(f"{bdf!r} is not a PCI address: expected [DDDD:]BB:DD.F, e.g. 0000:00:03.0")
    dom, bus, dev, fn = m.groups()
    return f"{int(dom or '0', 16):04x}:{bus.lower()}:{dev.lower()}.{fn}"


def is_vfio_driver(driver: str | None) -> bool:
    """True for vfio-pci and its variant drivers (``mlx5_vfio_pci``, ``vfio-pci-core`` users...).

    >>> is_vfio_driver("vfio-pci"), is_vfio_driver("e1000e"), is_vfio_driver(None)
    (True, False, False)
    """
    return bool(driver) and "vfio" in str(driver)


__all__ = ["BDF_RX", "InvalidBdfError", "is_bdf", "is_vfio_driver", "normalize_bdf"]
