"""pyvfio's config-space capability walk against Debian's ``lspci -vv``.

Host: the lspci parser on output recorded in the x86 guest. Guest (intel, amd): for every device
bound to vfio-pci, the capabilities, BARs and MSI/MSI-X counts pyvfio reads through the VFIO
device fd match ``lspci -vv``; for every PCI device of the guest, pyvfio's walk of the sysfs
config file matches too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from scenarios.device import parse_lspci_capabilities

from pyvfio.vfio.pci import walk_capabilities

#: ``lspci -vv -s 00:02.0`` in the x86 guest (QEMU 7.2 e1000e), trimmed.
E1000E_LSPCI = """\
00:02.0 Ethernet controller: Intel Corporation 82574L Gigabit Network Connection
	Subsystem: Intel Corporation Device 0000
	Control: I/O+ Mem+ BusMaster- SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR+ FastB2B- DisINTx-
	Region 0: Memory at feb40000 (32-bit, non-prefetchable) [size=128K]
	Region 1: Memory at feb60000 (32-bit, non-prefetchable) [size=128K]
	Region 2: I/O ports at c0c0 [size=32]
	Region 3: Memory at feb80000 (32-bit, non-prefetchable) [size=16K]
	Expansion ROM at feb00000 [disabled] [size=256K]
	Capabilities: [c8] Power Management version 2
		Flags: PMEClk- DSI+ D1- D2- AuxCurrent=0mA PME(D0-,D1-,D2-,D3hot-,D3cold-)
	Capabilities: [d0] MSI: Enable- Count=1/1 Maskable- 64bit+
	Capabilities: [e0] Express (v1) Root Complex Integrated Endpoint, MSI 00
	Capabilities: [a0] MSI-X: Enable- Count=5 Masked-
		Vector table: BAR=3 offset=00000000
	Capabilities: [100 v2] Advanced Error Reporting
	Capabilities: [140 v1] Device Serial Number 52-54-00-ff-ff-12-34-56
	Kernel driver in use: vfio-pci
"""

_REGION = re.compile(r"^\s*Region (\d): (Memory at|I/O ports at) ([0-9a-f]+) .*\[size=(\d+)([KMG]?)\]")
_MSIX = re.compile(r"MSI-X: Enable[+-] Count=(\d+)")
_MSI = re.compile(r"\] MSI: Enable[+-] Count=\d+/(\d+)")


def parse_lspci_regions(text: str) -> list[tuple[int, int, int, bool]]:
    """(BAR index, address, size, is I/O) per ``Region`` line."""
    out = []
    for line in text.splitlines():
        m = _REGION.match(line)
        if m:
            size = int(m.group(4)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(5)]
            out.append((int(m.group(1)), int(m.group(3), 16), size, m.group(2).startswith("I/O")))
    return out


def test_parse_lspci_recorded_e1000e():
    caps = parse_lspci_capabilities(E1000E_LSPCI)
    assert caps == [(0x01, 0xC8, False, 0), (0x05, 0xD0, False, 0), (0x10, 0xE0, False, 0),
                    (0x11, 0xA0, False, 0), (0x01, 0x100, True, 2), (0x03, 0x140, True, 1)]
    assert parse_lspci_regions(E1000E_LSPCI) == [(0, 0xFEB40000, 128 << 10, False), (1, 0xFEB60000, 128 << 10, False),
                                                 (2, 0xC0C0, 32, True), (3, 0xFEB80000, 16 << 10, False)]
    assert _MSIX.search(E1000E_LSPCI).group(1) == "5"
    assert _MSI.search(E1000E_LSPCI).group(1) == "1"


def test_walk_matches_mock_e1000e_config():
    """The simulated e1000e's config image (laid out as the guest's) walks to what lspci shows."""
    from pyvfio.mockkernel.pci import E1000e

    sim = E1000e()
    try:
        ours = [(c.id, c.offset, c.extended, c.version) for c in walk_capabilities(bytes(sim.config))]
        assert ours == parse_lspci_capabilities(E1000E_LSPCI)
    finally:
        sim.close()


def _lspci(bdf: str) -> str:
    out = subprocess.run(["lspci", "-vv", "-s", bdf], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip(), f"lspci -vv -s {bdf} printed nothing"
    return out.stdout


def _ours(caps) -> list[tuple[int, int, bool, int]]:
    return [(c.id, c.offset, c.extended, c.version) for c in caps]


@pytest.mark.guest(variants=["intel", "amd"], bind=["edu", "e1000e"], kernels=["stable"])
def test_vfio_devices_match_lspci(guest_info, no_fd_leak):
    from pyvfio.vfio import open_device
    from pyvfio.vfio.device import PciIrq

    assert shutil.which("lspci"), "pciutils missing on the host root (tools/setup.d/40-vfio.sh)"
    bound = [d for d in guest_info["devices"] if d.get("bound") and d.get("driver") == "vfio-pci"]
    assert {d["name"] for d in bound} >= {"edu", "e1000e"}, guest_info["devices"]
    for d in bound:
        text = _lspci(d["bdf"])
        theirs = parse_lspci_capabilities(text)
        assert theirs and all(t[0] is not None for t in theirs), f"unnamed capability in lspci: {text}"
        with open_device(d["bdf"]) as od:
            cfg = od.device.config
            assert _ours(cfg.capabilities()) == theirs, (d["name"], text)
            regions = [(b.index, b.address, b.size, b.io) for b in cfg.bars()]
            assert regions == parse_lspci_regions(text), (d["name"], text)
            m = _MSI.search(text)
            assert m and int(m.group(1)) == od.device.irq_info(PciIrq.MSI).count
            m = _MSIX.search(text)
            assert (int(m.group(1)) if m else 0) == od.device.irq_info(PciIrq.MSIX).count


@pytest.mark.guest(variants=["intel", "amd"], bind=["edu", "e1000e"], kernels=["stable"])
def test_every_guest_device_walk_matches_lspci():
    """pyvfio's capability walk over each PCI device's sysfs config file (read as root: the
    whole space) gives what lspci -vv lists."""
    root = "/sys/bus/pci/devices"
    checked = 0
    for bdf in sorted(os.listdir(root)):
        with open(os.path.join(root, bdf, "config"), "rb") as f:
            cfg = f.read()
        theirs = parse_lspci_capabilities(_lspci(bdf))
        assert all(t[0] is not None for t in theirs), (bdf, theirs)
        assert _ours(walk_capabilities(cfg)) == theirs, bdf
        checked += 1
    assert checked >= 3
