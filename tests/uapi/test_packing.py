"""The bytes each hot path sends are exactly the ffi-packed struct of the same request.

The hot paths (type1 and sPAPR MAP_DMA/UNMAP_DMA) pack their argument with ``struct`` into a
fresh ``bytearray`` (pyvfio.uapi.pack) and hand it to the seam. A recording backend captures
those bytes; each capture is compared, field by field and as a whole, with a struct packed by
the ffi (the declarations the layout test proves against the kernel headers), edge values
included (max u64, every flag bit).
"""

from __future__ import annotations

from typing import Any

import pytest

from pyvfio import ioctls
from pyvfio.errors import RangeError
from pyvfio.mockkernel.vfio.spapr import power_kernel
from pyvfio.seam.mock import MockBackend
from pyvfio.uapi import ffi
from pyvfio.uapi import pack
from pyvfio.vfio import Container, DmaFlags, Group

U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1
HOT = {ioctls.VFIO_IOMMU_MAP_DMA.name, ioctls.VFIO_IOMMU_UNMAP_DMA.name}


class RecordingBackend:
    """Records (request name, the bytes sent) of every ioctl whose argument is a packed
    bytearray. With ``dry`` set, hot requests are not forwarded: the recorder answers 0 and, for
    UNMAP_DMA, writes ``unmapped`` into the struct's ``size`` (what the kernel does)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.sent: list[tuple[str, bytes]] = []
        self.dry = False
        self.unmapped = 0

    def ioctl(self, fd: int, request: Any, arg: Any = 0, *, op: str | None = None,
              hint: str | None = None) -> int:
        if isinstance(arg, bytearray):
            self.sent.append((request.name, bytes(arg)))
            if self.dry and request.name in HOT:
                if request == ioctls.VFIO_IOMMU_UNMAP_DMA:
                    ffi.from_buffer(request.cdecl, arg).size = self.unmapped
                return 0
        return self._inner.ioctl(fd, request, arg, op=op, hint=hint)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def ffi_packed(ctype: str, **fields: int) -> bytes:
    """``ctype`` packed by the ffi with ``fields`` (argsz = its size), as bytes."""
    p = ffi.new(ctype + " *")
    p.argsz = ffi.sizeof(ctype)
    for name, value in fields.items():
        setattr(p, name, value)
    return bytes(ffi.buffer(p))


def assert_same(sent: tuple[str, bytes], request: ioctls.Request, **fields: int) -> None:
    """``sent`` is ``request`` with exactly ``fields``, byte for byte and field by field."""
    name, raw = sent
    assert name == request.name
    ctype = request.cdecl[:-2]
    expected = ffi_packed(ctype, **fields)
    assert len(raw) == ffi.sizeof(ctype) == len(expected)
    view = ffi.from_buffer(request.cdecl, bytearray(raw))
    assert view.argsz == ffi.sizeof(ctype)
    for f, value in fields.items():
        assert getattr(view, f) == value, f
    assert raw == expected


@pytest.fixture
def type1():
    rec = RecordingBackend(MockBackend())
    with Container(backend=rec) as c:
        c.attach(Group(3, backend=rec))
        iommu = c.set_iommu("TYPE1v2")
        iommu.info()
        yield rec, iommu


@pytest.fixture
def spapr():
    rec = RecordingBackend(MockBackend(power_kernel()))
    with Container(backend=rec) as c:
        c.attach(Group(0, backend=rec))
        iommu = c.set_iommu("SPAPR_TCE_v2")
        yield rec, iommu


def test_layouts_match_the_ffi():
    for fmt, ctype, fields in pack.LAYOUTS:
        assert fmt.size == ffi.sizeof(ctype)
        values = list(range(1, len(fields) + 1))
        p = ffi.new(ctype + " *")
        for f, v in zip(fields, values):
            setattr(p, f, v)
        assert fmt.pack(*values) == bytes(ffi.buffer(p))
    assert pack.TYPE1_DMA_UNMAP_SIZE_AT == ffi.offsetof("struct vfio_iommu_type1_dma_unmap", "size")


def test_request_cdecl_names_the_argument_struct():
    assert ioctls.VFIO_IOMMU_MAP_DMA.cdecl == "struct vfio_iommu_type1_dma_map *"
    assert ioctls.VFIO_IOMMU_UNMAP_DMA.arg_struct == "vfio_iommu_type1_dma_unmap"
    assert ioctls.VFIO_CHECK_EXTENSION.cdecl == "int *"
    assert ioctls.VFIO_IOMMU_DIRTY_PAGES.variant("START").cdecl == \
        "struct vfio_iommu_type1_dirty_bitmap *"
    for name, req in ioctls.requests().items():
        ffi.typeof(req.cdecl)  # every request's argument type exists in the ffi


MAP_CASES = [
    dict(flags=int(DmaFlags.READ | DmaFlags.WRITE), vaddr=0x7F0000001000, iova=0x100000, size=0x1000),
    dict(flags=int(DmaFlags.READ), vaddr=0x1000, iova=0, size=0x200000),
    dict(flags=int(DmaFlags.VADDR), vaddr=U64_MAX, iova=U64_MAX, size=U64_MAX),
    dict(flags=U32_MAX, vaddr=0, iova=0, size=0),
]


@pytest.mark.parametrize("case", MAP_CASES, ids=lambda c: f"flags{c['flags']:#x}-iova{c['iova']:#x}")
def test_type1_map_dma_bytes(type1, case):
    rec, iommu = type1
    rec.dry = True
    iommu.map_dma(case["vaddr"], case["iova"], case["size"], case["flags"])
    assert_same(rec.sent[-1], ioctls.VFIO_IOMMU_MAP_DMA, **case)


UNMAP_CASES = [
    dict(flags=0, iova=0x100000, size=0x1000),
    dict(flags=ioctls.VFIO_DMA_UNMAP_FLAG_ALL, iova=0, size=0),
    dict(flags=ioctls.VFIO_DMA_UNMAP_FLAG_VADDR, iova=U64_MAX, size=U64_MAX),
    dict(flags=U32_MAX, iova=U64_MAX - 0xFFF, size=0x1000),
]


@pytest.mark.parametrize("case", UNMAP_CASES, ids=lambda c: f"flags{c['flags']:#x}-iova{c['iova']:#x}")
def test_type1_unmap_dma_bytes_and_answer(type1, case):
    rec, iommu = type1
    rec.dry = True
    rec.unmapped = U64_MAX - 1  # the kernel's answer is read back from the same bytes
    assert iommu.unmap_dma(case["iova"], case["size"], case["flags"]) == U64_MAX - 1
    assert_same(rec.sent[-1], ioctls.VFIO_IOMMU_UNMAP_DMA, **case)


def test_type1_checked_map_and_unmap_send_the_same_bytes(type1):
    from pyvfio.services.dma import DmaBuffer

    rec, iommu = type1
    with DmaBuffer(0x2000) as buf:
        m = iommu.map(buf, 0x100000, write=False)
        assert_same(rec.sent[-1], ioctls.VFIO_IOMMU_MAP_DMA, flags=int(DmaFlags.READ),
                    vaddr=buf.addr, iova=0x100000, size=0x2000)
        m.unmap()
        assert_same(rec.sent[-1], ioctls.VFIO_IOMMU_UNMAP_DMA, flags=0, iova=0x100000, size=0x2000)


@pytest.mark.parametrize("bad", [dict(vaddr=U64_MAX + 1), dict(iova=-1), dict(size=1 << 64),
                                 dict(flags=U32_MAX + 1)])
def test_out_of_range_is_refused_before_the_syscall(type1, spapr, bad):
    for rec, iommu in (type1, spapr):
        args = dict(vaddr=0x1000, iova=0x1000, size=0x1000, flags=3) | bad
        n = len(rec.sent)
        with pytest.raises(RangeError):
            iommu.map_dma(args["vaddr"], args["iova"], args["size"], args["flags"])
        if "vaddr" not in bad and "flags" not in bad:
            with pytest.raises(RangeError):
                iommu.unmap_dma(args["iova"], args["size"])
        assert len(rec.sent) == n


@pytest.mark.parametrize("case", MAP_CASES, ids=lambda c: f"flags{c['flags']:#x}-iova{c['iova']:#x}")
def test_spapr_map_dma_bytes(spapr, case):
    rec, iommu = spapr
    rec.dry = True
    iommu.map_dma(case["vaddr"], case["iova"], case["size"], case["flags"])
    assert_same(rec.sent[-1], ioctls.VFIO_IOMMU_MAP_DMA, **case)


@pytest.mark.parametrize("case", [c for c in UNMAP_CASES if c["flags"] == 0]
                         + [dict(flags=0, iova=U64_MAX, size=U64_MAX)])
def test_spapr_unmap_dma_bytes(spapr, case):
    rec, iommu = spapr
    rec.dry = True
    iommu.unmap_dma(case["iova"], case["size"])
    assert_same(rec.sent[-1], ioctls.VFIO_IOMMU_UNMAP_DMA, **case)


def test_the_mock_decodes_the_same_bytes(type1):
    """Not dry: the mock kernel reads the packed bytes through the ffi view and answers into
    them (UNMAP_DMA's size)."""
    from pyvfio.services.dma import DmaBuffer

    rec, iommu = type1
    with DmaBuffer(0x1000) as buf:
        iommu.map_dma(buf.addr, 0x200000, 0x1000)
        assert iommu.find(0x200000) is None  # raw: no handle
        assert iommu.unmap_dma(0x200000, 0x1000) == 0x1000
        assert iommu.unmap_dma(0x200000, 0x1000) == 0  # nothing left there
    names = [n for n, _ in rec.sent]
    assert names[-3:] == [ioctls.VFIO_IOMMU_MAP_DMA.name] + [ioctls.VFIO_IOMMU_UNMAP_DMA.name] * 2
