"""Issue 12, item 6: the package face: first-hour names exported, help(pyvfio) starts with a
short map, EduDevice takes what open_device returns, reprs print addresses in hex."""

from __future__ import annotations

import pydoc
import subprocess
import sys

import pytest

import pyvfio
from pyvfio.errors import ArgumentError
from pyvfio.seam.mock import MockBackend

FIRST_HOUR = ["DmaBuffer", "DmaMapper", "EduDevice", "PciIrq", "PciRegion", "GuestMemory",
              "DirtyTracker", "open_source", "find_devices", "open_device", "get_backend"]


@pytest.mark.parametrize("name", FIRST_HOUR)
def test_exported(name: str) -> None:
    assert name in pyvfio.__all__ and getattr(pyvfio, name) is not None


def test_every_export_resolves_and_no_import_cycle() -> None:
    for name in pyvfio.__all__:
        assert hasattr(pyvfio, name), name
    # a fresh interpreter imports the package face first (a cycle would fail here)
    code = "import pyvfio; from pyvfio import *; print(len(pyvfio.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == len(pyvfio.__all__)


def test_help_starts_with_the_first_hour_map() -> None:
    text = pydoc.render_doc(pyvfio, renderer=pydoc.plaintext)
    desc = text.split("DESCRIPTION", 1)[1].split("PACKAGE CONTENTS", 1)[0]
    assert len(desc.splitlines()) < 45
    for name in FIRST_HOUR:
        assert name in desc, name


def test_edu_device_takes_the_opened_device() -> None:
    with pyvfio.open_device("0000:00:03.0", backend=MockBackend()) as d:
        edu = pyvfio.EduDevice(d)
        assert edu.device is d.device and edu.liveness()
    with pytest.raises(ArgumentError, match="vfio Device"):
        pyvfio.EduDevice(object())


def test_reprs_print_hex() -> None:
    with pyvfio.open_device("0000:00:03.0", backend=MockBackend()) as d:
        info = repr(d.iommu.info())
        assert "iova_pgsizes=0x40201000" in info and "pgsize_bitmap=0x40201000" in info
        assert "size=0x100000" in repr(d.device.region_info("BAR0"))
        assert "offset=0x40" in repr(d.device.config.find_capability("MSI"))
        assert "address=0xfea00000" in repr(d.device.config.bars()[0])
