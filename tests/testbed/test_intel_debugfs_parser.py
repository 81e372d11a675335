"""The intel debugfs page-table dump parser (tests/scenarios/intel_debugfs.py) on a dump as the
7.2 kernel printed it in the intel@built guest (a 4 KiB leaf at 0x100000 and a 2 MiB leaf at
0x200000, whose line stops at the PDE), plus a 1 GiB leaf shaped the same way."""

from __future__ import annotations

from scenarios.intel_debugfs import leaf_of, parse

DUMP = """\
Device 0000:00:03.0 @0x11e7f8000
IOVA_PFN\t\tPML5E\t\t\tPML4E\t\t\tPDPE\t\t\tPDE\t\t\tPTE
0x0000000000100 |\t0x0000000000000000\t0x0000000000000000\t0x000000000687d403\t0x000000000684e403\t0x000000000b988003
0x0000000000200 |\t0x0000000000000000\t0x0000000000000000\t0x000000000687d403\t0x0000000010000083
0x0000000040000 |\t0x0000000000000000\t0x0000000000000000\t0x0000000140000883

"""


def test_leaves_and_their_sizes():
    leaves = parse(DUMP)
    assert [(l.iova, l.size) for l in leaves] == [(0x100000, 4096), (0x200000, 2 << 20),
                                                  (0x40000000, 1 << 30)]
    huge = leaf_of(leaves, 0x200000)
    assert huge is not None and huge.pde & 0x80 and huge.pte == 0
    assert leaf_of(leaves, 0x3FF000) is huge  # inside the 2 MiB leaf
    assert leaf_of(leaves, 0x101000) is None  # the page after the 4 KiB leaf is unmapped
    assert leaf_of(leaves, 0x100FFF).size == 4096
    assert parse("IOVA_PFN\nnot a line | 0x1\n") == []
