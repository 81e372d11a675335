"""``struct`` packers of the argument structs that hot paths send as packed ``bytearray``\\ s.

A hot path (type1 and sPAPR MAP_DMA/UNMAP_DMA) packs a fresh ``bytearray`` per call with one
of these and hands it to the seam, whose real backend passes the bytes to the kernel and whose
mock backend decodes them through a cdata view of the same ffi struct. Each format is checked
here against the ffi layout (size and every field offset) at import, and
``tests/uapi/test_packing.py`` compares the bytes field by field with ffi-packed structs.

>>> buf = bytearray(TYPE1_DMA_UNMAP.size)
>>> TYPE1_DMA_UNMAP.pack_into(buf, 0, TYPE1_DMA_UNMAP.size, 0, 0x100000, 0x1000)
>>> U64.unpack_from(buf, TYPE1_DMA_UNMAP_SIZE_AT)[0]
4096
"""

from __future__ import annotations

import struct

from . import ffi

#: struct vfio_iommu_type1_dma_map: argsz, flags, vaddr, iova, size.
TYPE1_DMA_MAP = struct.Struct("=IIQQQ")
TYPE1_DMA_MAP_FIELDS = ("argsz", "flags", "vaddr", "iova", "size")
#: struct vfio_iommu_type1_dma_unmap (without its flexible ``data``): argsz, flags, iova, size.
TYPE1_DMA_UNMAP = struct.Struct("=IIQQ")
TYPE1_DMA_UNMAP_FIELDS = ("argsz", "flags", "iova", "size")
#: Offset of ``size`` in struct vfio_iommu_type1_dma_unmap (the kernel writes the unmapped size there).
TYPE1_DMA_UNMAP_SIZE_AT = ffi.offsetof("struct vfio_iommu_type1_dma_unmap", "size")
U64 = struct.Struct("=Q")

#: (packer, ffi struct, field names) of every hot-path format, for the checks below and tests.
LAYOUTS = (
    (TYPE1_DMA_MAP, "struct vfio_iommu_type1_dma_map", TYPE1_DMA_MAP_FIELDS),
    (TYPE1_DMA_UNMAP, "struct vfio_iommu_type1_dma_unmap", TYPE1_DMA_UNMAP_FIELDS),
)


def _offsets(fmt: struct.Struct) -> list[int]:
    out, at = [], 0
    for code in fmt.format.lstrip("=<>!@"):
        out.append(at)
        at += struct.calcsize("=" + code)
    return out


for _fmt, _ctype, _fields in LAYOUTS:
    if _fmt.size != ffi.sizeof(_ctype) or _offsets(_fmt) != [ffi.offsetof(_ctype, f) for f in _fields]:
        raise ImportError(f"pyvfio.uapi.pack: {_fmt.format!r} does not match {_ctype}")

__all__ = ["TYPE1_DMA_MAP", "TYPE1_DMA_MAP_FIELDS", "TYPE1_DMA_UNMAP", "TYPE1_DMA_UNMAP_FIELDS",
           "TYPE1_DMA_UNMAP_SIZE_AT", "U64", "LAYOUTS"]
