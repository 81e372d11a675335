"""A test helper (not library code): read intel-iommu's debugfs page-table dump of a device.

``/sys/kernel/debug/iommu/intel/<bdf>/domain_translation_struct`` (drivers/iommu/intel/debugfs.c,
CONFIG_INTEL_IOMMU_DEBUGFS; our ``built`` guest kernel has it) prints one line per *leaf* of the
device's second-stage page table::

    IOVA_PFN                PML5E                   PML4E                   PDPE                    PDE                     PTE
    0x0000000000200 |       0x0000000000000000      0x0000000000000000      0x000000011e7f9003      0x000000011f200883      0x0000000000000000

the IOVA's page frame number, then the entries on the walk from the top level down (levels the
table does not have print 0; the walk stops at a superpage leaf, so a 2 MiB line has no PTE
column: measured on 7.2 under QEMU 10's intel-iommu, ``0x0000000000200 |  0x0  0x0  0x687d403
0x10000083``). A 2 MiB leaf is a PDE with the
page-size bit (7) set and no PTE; a 1 GiB leaf a PDPE with bit 7; a 4 KiB leaf has a PTE. This is
how tools/testing/selftests/vfio/vfio_dma_mapping_test.c checks the IOMMU used huge pages.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

DEBUGFS = "/sys/kernel/debug"
PAGE_SIZE_BIT = 1 << 7
_LINE = re.compile(r"^\s*0x([0-9a-fA-F]+)\s*\|\s*(.*)$")


@dataclass(frozen=True)
class Leaf:
    """One leaf of the dump: its IOVA and the walk ``(pml5e, pml4e, pdpe, pde, pte)``."""

    iova: int
    entries: tuple[int, int, int, int, int]

    @property
    def pde(self) -> int:
        return self.entries[3]

    @property
    def pte(self) -> int:
        return self.entries[4]

    @property
    def size(self) -> int:
        """Bytes this leaf maps: 4 KiB (a PTE), 2 MiB (a PDE with PS), 1 GiB (a PDPE with PS)."""
        _pml5, _pml4, pdpe, pde, pte = self.entries
        if pte:
            return 4096
        if pde & PAGE_SIZE_BIT:
            return 2 << 20
        if pdpe & PAGE_SIZE_BIT:
            return 1 << 30
        return 0

    def contains(self, iova: int) -> bool:
        return self.iova <= iova < self.iova + self.size


def parse(text: str) -> list[Leaf]:
    """Every leaf line of a ``domain_translation_struct`` dump, in order.

    >>> t = "IOVA_PFN\\t\\tPML5E\\nh\\n0x0000000000200 |\\t0x0\\t0x0\\t0x11e7f9003\\t0x11f200883\\t0x0\\n"
    >>> [(hex(l.iova), l.size) for l in parse(t)]
    [('0x200000', 2097152)]
    >>> real = "0x0000000000200 |\t0x0000000000000000\t0x0000000000000000\t0x000000000687d403\t0x0000000010000083"
    >>> [(hex(l.iova), l.size) for l in parse(real)]
    [('0x200000', 2097152)]
    """
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        values = [int(v, 16) for v in m.group(2).split()]
        if not 3 <= len(values) <= 5:
            continue
        values += [0] * (5 - len(values))  # levels below a superpage leaf are not printed
        out.append(Leaf(int(m.group(1), 16) << 12, tuple(values)))  # type: ignore[arg-type]
    return out


def leaf_of(leaves: list[Leaf], iova: int) -> Leaf | None:
    """The leaf mapping ``iova``, if any."""
    return next((l for l in leaves if l.contains(iova)), None)


def mount_debugfs(root: str = DEBUGFS) -> None:
    """Mount debugfs at ``root`` unless it is mounted already."""
    if not os.path.isdir(os.path.join(root, "iommu")):
        subprocess.run(["mount", "-t", "debugfs", "none", root], check=False)


def dump_path(bdf: str, root: str = DEBUGFS) -> str:
    return os.path.join(root, "iommu", "intel", bdf, "domain_translation_struct")


def read_dump(bdf: str, root: str = DEBUGFS) -> str:
    """The dump of ``bdf``'s page table (mounting debugfs first if needed)."""
    mount_debugfs(root)
    with open(dump_path(bdf, root)) as f:
        return f.read()
