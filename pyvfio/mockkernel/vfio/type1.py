"""Mock vfio_iommu_type1: the type1 / type1v2 IOMMU rules of drivers/vfio/vfio_iommu_type1.c.

Rules reproduced (with the kernel's errnos):

* GET_INFO: argsz below ``iova_pgsizes``'s end → EINVAL; flags PGSIZES|CAPS; capability chain
  IOVA_RANGE, MIGRATION, DMA_AVAIL (8-byte aligned, ``next`` offsets from the start of the
  struct); when argsz is too small for the chain, ``argsz`` is raised to the size needed and
  ``cap_offset`` stays 0, so callers call again.
* MAP_DMA: argsz/flags invalid → EINVAL; neither READ nor WRITE (nor VADDR) → EINVAL; size 0 or
  iova/vaddr/size not aligned to the smallest IOMMU page → EINVAL; wrap-around → EINVAL;
  overlap with a mapping → EEXIST; no ``dma_avail`` left (module parameter ``dma_entry_limit``,
  read at SET_IOMMU) → ENOSPC; outside the IOVA ranges (e.g. the MSI window) → EINVAL; vaddr not
  mapped in the process → EFAULT; pinning over RLIMIT_MEMLOCK without CAP_IPC_LOCK → ENOMEM
  (accounting into locked_vm happens for every caller).
* UNMAP_DMA: unknown flags → EINVAL; UNMAP_FLAG_ALL needs iova = size = 0; misaligned or zero
  size or wrap → EINVAL; v2: a range that bisects a mapping → EINVAL; otherwise every mapping
  inside the range goes and ``size`` is rewritten to the total unmapped (0 when none).
* VFIO_UPDATE_VADDR (reported once the IOMMU is set, like the 6.12 guest): UNMAP with
  FLAG_VADDR invalidates vaddrs, MAP with FLAG_VADDR supplies new ones. Like the kernel, the new
  vaddr is only recorded: nothing is re-pinned, and device DMA keeps reaching the pages pinned at
  map time (``DmaEntry.pinned_vaddr``), also while the vaddr is invalid (the IOMMU page table is
  untouched). The kernel cannot check that the new vaddr addresses the same memory; neither does
  the mock (pyvfio's ``update_vaddr`` does, before the syscall).

Mappings are :class:`DmaEntry` objects kept sorted by IOVA; ``DmaEntry.state`` is free for
extensions (dirty tracking keeps its per-mapping bitmap there).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

from ... import ioctls
from ...uapi import ffi
from . import dirty
from ..core import KernelError, MockKernel, handles
from .core import IommuDriver, IommuFault, register_iommu_driver, state
from .group import MockGroup
from ..memory import user_mapped
from ...util.intervals import SortedIndex

PAGE_SIZE = 4096
#: What the 6.12 intel-iommu guest reports: 4K | 2M | 1G.
DEFAULT_PGSIZES = 0x40201000
#: DIRTY_BITMAP_SIZE_MAX of the kernel (256 MiB of bitmap).
DIRTY_BITMAP_SIZE_MAX = 0x10000000
U64 = (1 << 64) - 1

IOMMU_READ = 1
IOMMU_WRITE = 2


@dataclass
class DmaEntry:
    """One type1 mapping (the kernel's struct vfio_dma)."""

    iova: int
    size: int
    vaddr: int
    prot: int
    lock_cap: bool
    vaddr_invalid: bool = False
    #: Where the pages were pinned at MAP_DMA: what the IOMMU translates to, whatever ``vaddr``
    #: a later VADDR update supplies (the kernel keeps its pinned pages).
    pinned_vaddr: int = -1
    #: Extension state (e.g. dirty tracking bitmaps), keyed by the extension's name.
    state: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pinned_vaddr < 0:
            self.pinned_vaddr = self.vaddr

    @property
    def end(self) -> int:
        return self.iova + self.size


def _end(e: DmaEntry) -> int:
    return e.end


class Type1Iommu(IommuDriver):
    """The iommu_data of a container whose IOMMU is type1 (v1, v2 or nesting)."""

    TYPES = (ioctls.VFIO_TYPE1_IOMMU, ioctls.VFIO_TYPE1v2_IOMMU, ioctls.VFIO_TYPE1_NESTING_IOMMU)
    #: Mock knobs (class level; override per instance or per subclass in tests).
    #: VFIO_UPDATE_VADDR: 1 once the IOMMU is set (6.x: ``iommu && !has_emulated``), 0 before.
    update_vaddr_supported = True
    #: The type1 driver generation modelled where kernels differ: (6, 12) gives EINVAL for a
    #: MAP/UNMAP whose end overflows u64 and unmaps nothing of a range ending at 2^64 (its end
    #: computation wraps to 0); (7, 0) and later give EOVERFLOW and unmap it (check_add_overflow).
    kernel_version: tuple[int, int] = (6, 12)
    #: VFIO_DMA_CC_IOMMU after SET_IOMMU (the intel QEMU guest reports 0).
    cache_coherent = False
    pgsize_bitmap = DEFAULT_PGSIZES

    def __init__(self, kernel: MockKernel, container: Any, arg: int) -> None:
        if arg not in self.TYPES:
            raise KernelError(errno.EINVAL, f"type1: unsupported type {arg}")
        super().__init__(kernel, container, arg)
        self.v2 = arg != ioctls.VFIO_TYPE1_IOMMU
        st = state(kernel)
        self.vfio = st
        self.dma_avail = int(st.read_param("vfio_iommu_type1", "dma_entry_limit", "65535"))
        self._index: SortedIndex[DmaEntry] = SortedIndex()
        self.vaddr_invalid_count = 0
        self.dirty_page_tracking = False

    # -- driver ops ----------------------------------------------------------------------------
    @classmethod
    def check_extension(cls, iommu: "IommuDriver | None", arg: int) -> int:
        if arg in (ioctls.VFIO_TYPE1_IOMMU, ioctls.VFIO_TYPE1v2_IOMMU,
                   ioctls.VFIO_TYPE1_NESTING_IOMMU, ioctls.VFIO_UNMAP_ALL):
            return 1
        if arg == ioctls.VFIO_UPDATE_VADDR:
            return 1 if cls.update_vaddr_supported and iommu is not None else 0
        if arg == ioctls.VFIO_DMA_CC_IOMMU:
            return 1 if cls.cache_coherent and iommu is not None and iommu.groups else 0
        return 0

    def attach_group(self, group: MockGroup) -> None:
        unsafe = self.vfio.read_param("vfio_iommu_type1", "allow_unsafe_interrupts", "N")
        if not group.iommu_group.interrupt_remapping and unsafe not in ("Y", "1"):
            raise KernelError(
                errno.EPERM,
                "vfio_iommu_type1_attach_group: No interrupt remapping support.  Use the module "
                'param "allow_unsafe_interrupts" to enable VFIO IOMMU support on this platform')
        super().attach_group(group)

    def detach_group(self, group: MockGroup) -> None:
        super().detach_group(group)
        if not self.groups:
            self._remove_all()

    def release(self) -> None:
        self._remove_all()

    # -- IOVA space ----------------------------------------------------------------------------
    def iova_ranges(self) -> list[tuple[int, int]]:
        """The usable IOVA ranges (inclusive ends): the aperture minus reserved regions."""
        if not self.groups:
            return []
        lo = max(g.iommu_group.aperture[0] for g in self.groups)
        hi = min(g.iommu_group.aperture[1] for g in self.groups)
        ranges = [(lo, hi)]
        for g in self.groups:
            for rs, re_ in g.iommu_group.reserved:
                out = []
                for a, b in ranges:
                    if re_ < a or rs > b:
                        out.append((a, b))
                        continue
                    if a < rs:
                        out.append((a, rs - 1))
                    if re_ < b:
                        out.append((re_ + 1, b))
                ranges = out
        return ranges

    @property
    def _overflow_errno(self) -> int:
        return errno.EOVERFLOW if self.kernel_version >= (7, 0) else errno.EINVAL

    @property
    def min_pgsize(self) -> int:
        return self.pgsize_bitmap & -self.pgsize_bitmap

    # -- the mapping tree --------------------------------------------------------------------
    def entries(self) -> list[DmaEntry]:
        return list(self._index)

    def _find(self, start: int, size: int = 1) -> DmaEntry | None:
        """The mapping overlapping [start, start+size), if any (vfio_find_dma)."""
        e = next(self._index.below(start + max(size, 1)), None)
        return e if e is not None and e.end > start else None

    def _link(self, e: DmaEntry) -> None:
        self._index.insert(e.iova, e)

    def _remove(self, e: DmaEntry) -> None:
        self._index.remove(e.iova, e)
        self.vfio.task.pinned -= e.size
        self.dma_avail += 1
        if e.vaddr_invalid:
            self.vaddr_invalid_count -= 1

    def _remove_all(self) -> None:
        for e in list(self._index):
            self._remove(e)

    # -- ioctls --------------------------------------------------------------------------------
    @handles("VFIO_IOMMU_GET_INFO")
    def get_info(self, arg: Any) -> int:
        info = ffi.cast("struct vfio_iommu_type1_info *", arg)
        minsz = ffi.offsetof("struct vfio_iommu_type1_info", "iova_pgsizes") + 8
        if info.argsz < minsz:
            raise KernelError(errno.EINVAL, "type1: GET_INFO argsz too small")
        base = ffi.sizeof("struct vfio_iommu_type1_info")
        caps = self._build_caps(base)
        info.flags = ioctls.VFIO_IOMMU_INFO_PGSIZES | ioctls.VFIO_IOMMU_INFO_CAPS
        info.iova_pgsizes = self.pgsize_bitmap
        given = int(info.argsz)
        if given < base + len(caps):
            info.argsz = base + len(caps)
            if given >= base:
                info.cap_offset = 0
        else:
            ffi.memmove(ffi.cast("char *", info) + base, caps, len(caps))
            info.cap_offset = base
        return 0

    def _build_caps(self, base: int) -> bytes:
        """The capability chain as it lands after the struct (``next`` counts from the struct)."""
        chunks: list[bytes] = []

        def add(ctype: str, extra: int, fill: Any) -> None:
            size = ffi.sizeof(ctype) + extra
            buf = ffi.new("char[]", size)
            cap = ffi.cast(ctype + " *", buf)
            cap.header.version = 1
            fill(cap)
            chunks.append(bytes(ffi.buffer(buf, size)))

        ranges = self.iova_ranges()

        def iova(cap: Any) -> None:
            cap.header.id = ioctls.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE
            cap.nr_iovas = len(ranges)
            for i, (a, b) in enumerate(ranges):
                cap.iova_ranges[i].start = a
                cap.iova_ranges[i].end = b

        def migration(cap: Any) -> None:
            cap.header.id = ioctls.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION
            cap.flags = 0
            cap.pgsize_bitmap = self.pgsize_bitmap
            cap.max_dirty_bitmap_size = DIRTY_BITMAP_SIZE_MAX

        def avail(cap: Any) -> None:
            cap.header.id = ioctls.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL
            cap.avail = self.dma_avail

        add("struct vfio_iommu_type1_info_cap_iova_range",
            len(ranges) * ffi.sizeof("struct vfio_iova_range"), iova)
        add("struct vfio_iommu_type1_info_cap_migration", 0, migration)
        add("struct vfio_iommu_type1_info_dma_avail", 0, avail)
        # lay the chain out: each cap 8-byte aligned, next = offset of the following cap
        out = bytearray()
        offsets = []
        for c in chunks:
            while len(out) % 8:
                out.append(0)
            offsets.append(len(out))
            out += c
        for i, off in enumerate(offsets):
            nxt = base + offsets[i + 1] if i + 1 < len(offsets) else 0
            out[off + 4:off + 8] = nxt.to_bytes(4, "little")
        return bytes(out)

    @handles("VFIO_IOMMU_MAP_DMA")
    def map_dma(self, arg: Any) -> int:
        m = ffi.cast("struct vfio_iommu_type1_dma_map *", arg)
        mask = (ioctls.VFIO_DMA_MAP_FLAG_READ | ioctls.VFIO_DMA_MAP_FLAG_WRITE
                | ioctls.VFIO_DMA_MAP_FLAG_VADDR)
        if m.argsz < ffi.sizeof("struct vfio_iommu_type1_dma_map") or m.flags & ~mask:
            raise KernelError(errno.EINVAL, "type1: MAP_DMA argsz/flags invalid")
        if m.flags & ioctls.VFIO_DMA_MAP_FLAG_VADDR and not self.update_vaddr_supported:
            raise KernelError(errno.EINVAL, "type1: MAP_DMA VADDR flag not supported")
        set_vaddr = bool(m.flags & ioctls.VFIO_DMA_MAP_FLAG_VADDR)
        prot = (IOMMU_WRITE if m.flags & ioctls.VFIO_DMA_MAP_FLAG_WRITE else 0) | \
               (IOMMU_READ if m.flags & ioctls.VFIO_DMA_MAP_FLAG_READ else 0)
        if bool(prot) == set_vaddr:
            raise KernelError(errno.EINVAL, "type1: MAP_DMA needs READ and/or WRITE (or VADDR alone)")
        iova, vaddr, size = int(m.iova), int(m.vaddr), int(m.size)
        pg = self.min_pgsize
        if not size or (size | iova | vaddr) & (pg - 1):
            raise KernelError(errno.EINVAL, "type1: MAP_DMA size zero or not page aligned")
        if iova + size - 1 > U64 or vaddr + size - 1 > U64:
            raise KernelError(self._overflow_errno, "type1: MAP_DMA range wraps")
        dma = self._find(iova, size)
        if set_vaddr:
            if dma is None:
                raise KernelError(errno.ENOENT, "type1: MAP_DMA VADDR: no such mapping")
            if not dma.vaddr_invalid or dma.iova != iova or dma.size != size:
                raise KernelError(errno.EINVAL, "type1: MAP_DMA VADDR: mapping mismatch")
            dma.vaddr = vaddr
            dma.vaddr_invalid = False
            self.vaddr_invalid_count -= 1
            return 0
        if dma is not None:
            raise KernelError(errno.EEXIST, "")
        if self.dma_avail <= 0:
            raise KernelError(errno.ENOSPC, "")
        end = iova + size - 1
        if not any(a <= iova and end <= b for a, b in self.iova_ranges()):
            raise KernelError(errno.EINVAL, f"type1: MAP_DMA {iova:#x}+{size:#x} outside the IOVA ranges")
        task = self.vfio.task
        if not user_mapped(vaddr, size):
            raise KernelError(errno.EFAULT, "type1: MAP_DMA vaddr not mapped")
        lock_cap = task.cap_ipc_lock()
        if not lock_cap:
            limit = task.rlimit_memlock() // PAGE_SIZE
            if task.locked_vm() // PAGE_SIZE + size // PAGE_SIZE > limit:
                raise KernelError(errno.ENOMEM,
                                  f"vfio_pin_pages_remote: RLIMIT_MEMLOCK ({task.rlimit_memlock()}) exceeded")
        self.dma_avail -= 1
        task.pinned += size
        self._link(DmaEntry(iova, size, vaddr, prot, lock_cap))
        return 0

    @handles("VFIO_IOMMU_UNMAP_DMA")
    def unmap_dma(self, arg: Any) -> int:
        u = ffi.cast("struct vfio_iommu_type1_dma_unmap *", arg)
        mask = (ioctls.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP | ioctls.VFIO_DMA_UNMAP_FLAG_ALL
                | ioctls.VFIO_DMA_UNMAP_FLAG_VADDR)
        minsz = ffi.offsetof("struct vfio_iommu_type1_dma_unmap", "size") + 8
        if u.argsz < minsz or u.flags & ~mask:
            raise KernelError(errno.EINVAL, "type1: UNMAP_DMA argsz/flags invalid")
        flags = int(u.flags)
        unmap_all = bool(flags & ioctls.VFIO_DMA_UNMAP_FLAG_ALL)
        invalidate_vaddr = bool(flags & ioctls.VFIO_DMA_UNMAP_FLAG_VADDR)
        if unmap_all and flags & ioctls.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP:
            raise KernelError(errno.EINVAL, "type1: UNMAP_ALL with a dirty bitmap")
        if invalidate_vaddr and not self.update_vaddr_supported:
            raise KernelError(errno.EINVAL, "type1: UNMAP VADDR not supported")
        if flags & ioctls.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP:
            return self.unmap_with_bitmap(u)
        iova, size = int(u.iova), int(u.size)
        unmapped = 0
        u.size = 0
        pg = self.min_pgsize
        if iova & (pg - 1):
            raise KernelError(errno.EINVAL, "type1: UNMAP_DMA iova not aligned")
        if unmap_all:
            if iova or size:
                raise KernelError(errno.EINVAL, "type1: UNMAP_ALL needs iova = size = 0")
            size = U64
        elif not size or size & (pg - 1):
            raise KernelError(errno.EINVAL, "type1: UNMAP_DMA size zero or unaligned")
        elif iova + size - 1 > U64:
            raise KernelError(self._overflow_errno, "type1: UNMAP_DMA range wraps")
        if self.v2 and not unmap_all:
            first = self._find(iova)
            if first is not None and first.iova != iova:
                raise KernelError(errno.EINVAL, "type1: UNMAP_DMA would bisect a mapping (v2)")
            last = self._find(iova + size - 1)
            if last is not None and last.end != iova + size:
                raise KernelError(errno.EINVAL, "type1: UNMAP_DMA would bisect a mapping (v2)")
        end = iova + size  # may exceed U64 for UNMAP_ALL; Python ints do not wrap
        victims_of_wrap = self.kernel_version < (7, 0)
        if victims_of_wrap and not unmap_all and end == U64 + 1:
            end = 0  # 6.x: dma_addr_t iova + size wraps to 0, and nothing lies below it
        victims = self._index.overlapping(iova, end, _end)
        if victims_of_wrap:  # 6.x's lookup computes dma->iova + dma->size: 0 for the last page
            victims = [e for e in victims if e.end <= U64]
        if not self.v2:
            if victims and victims[0].iova < iova:  # v1: an offset unmap removes nothing
                victims = []
        if invalidate_vaddr:
            if any(e.vaddr_invalid for e in victims):
                raise KernelError(errno.EINVAL, "type1: UNMAP VADDR: vaddr already invalid")
            for e in victims:
                e.vaddr_invalid = True
                self.vaddr_invalid_count += 1
                unmapped += e.size
        else:
            for e in victims:
                unmapped += e.size
                self._remove(e)
        u.size = unmapped
        return 0

    def unmap_with_bitmap(self, u: Any) -> int:
        """UNMAP_DMA with GET_DIRTY_BITMAP: implemented by the dirty-tracking module."""
        return dirty.type1_unmap_with_bitmap(self, u)

    @handles("VFIO_IOMMU_DIRTY_PAGES")
    def dirty_pages(self, arg: Any) -> int:
        """VFIO_IOMMU_DIRTY_PAGES (0x3b75, the number sPAPR uses for REGISTER_MEMORY: it only
        reaches this handler when the container's IOMMU is type1)."""
        return dirty.type1_dirty_pages(self, arg)

    # -- what simulated devices use --------------------------------------------------------------
    def translate(self, iova: int, size: int, write: bool) -> int:
        """User address backing [iova, iova+size) for a device access; IommuFault otherwise.

        The range may span adjacent mappings only when their user addresses are contiguous.
        """
        need = IOMMU_WRITE if write else IOMMU_READ
        if size <= 0:
            raise IommuFault(errno.EINVAL, "empty DMA")
        pos, base = iova, None
        while pos < iova + size:
            e = self._find(pos)
            if e is None or not e.prot & need:
                raise IommuFault(errno.EFAULT, f"IOMMU fault at {pos:#x}")
            va = e.pinned_vaddr + (pos - e.iova)  # the pinned pages, not the current vaddr
            if base is None:
                base = va
            elif va != base + (pos - iova):
                raise IommuFault(errno.EFAULT, f"IOVA range {iova:#x}+{size:#x} not contiguous")
            pos = e.end
        assert base is not None
        if write and self.dirty_page_tracking:
            dirty.mark(self, iova, size)  # the IOMMU sets the pages' dirty bits on a write
        return base


def install(kernel: MockKernel) -> None:
    register_iommu_driver(kernel, Type1Iommu)
