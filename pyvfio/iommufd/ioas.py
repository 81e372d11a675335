"""iommufd IO address spaces (IOAS) and hardware page tables (HWPT), made by an
:class:`~pyvfio.iommufd.IommuFd` (which closes them: HWPTs before IOASes).

:class:`Ioas` is what VFIO's type1 container is for the legacy path: ``map``/``unmap`` return
the same :class:`~pyvfio.vfio.type1.DmaMapping` handles, and ``info()`` answers with the usable
IOVA ranges and the smallest page, so :class:`~pyvfio.services.dma.DmaMapper` and the edu
scenarios work over an IOAS unchanged. An IOAS only narrows to the device's limits (aperture,
MSI window) once a device is attached: build a DmaMapper after the attach.

Safety: while a mapping exists a device attached to the IOAS may read/write the memory at any
time; :class:`DmaMapping` keeps its buffer alive until it is unmapped. Pages are pinned (and
charged to VmPin, plus locked_vm without CAP_IPC_LOCK) while the IOAS has a domain.

Example (mock)::

    >>> from pyvfio.seam.mock import MockBackend
    >>> from pyvfio.iommufd import IommuFd
    >>> from pyvfio.services.dma import DmaBuffer
    >>> with IommuFd(backend=MockBackend()) as fd:
    ...     ioas = fd.ioas_alloc()
    ...     with DmaBuffer(8192) as buf:
    ...         m = ioas.map(buf)             # the kernel picks the IOVA
    ...         (hex(m.iova), m.size, ioas.unmap_all())
    ('0x2000', 8192, 8192)
"""

from __future__ import annotations

import enum
import errno
import mmap as _mmap
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from ..core.fd import Closeable
from .. import ioctls as I
from ..core.buffer import buffer_span, pin
from ..core.iova import IovaRange
from ..core.mapping import DmaFlags, DmaMapping, MappingTable, ShortUnmapError, as_mapping
from ..errors import AlignmentError, ArgumentError, PyvfioError, RangeError, StateError, register_hint
from ..uapi import ffi
from ..uapi.args import as_int, fill
from ..util.proc import memlock_limit, vmlck, vmpin
from ..util.hexrepr import hex_repr


if TYPE_CHECKING:
    from .context import IommuFd

PAGE_SIZE = _mmap.PAGESIZE
U64_MAX = (1 << 64) - 1
_MAX_RANGES_RETRIES = 4

__all__ = ["Ioas", "HwPagetable", "HwInfo", "HwCaps", "HwInfoType", "IoasInfo"]


class HwInfoType(enum.IntEnum):
    """``iommu_hw_info.out_data_type``."""

    NONE = I.IOMMU_HW_INFO_TYPE_NONE
    INTEL_VTD = I.IOMMU_HW_INFO_TYPE_INTEL_VTD


class HwCaps(enum.IntFlag):
    """``iommu_hw_info.out_capabilities``."""

    DIRTY_TRACKING = I.IOMMU_HW_CAP_DIRTY_TRACKING
    PCI_PASID_EXEC = I.IOMMU_HW_CAP_PCI_PASID_EXEC
    PCI_PASID_PRIV = I.IOMMU_HW_CAP_PCI_PASID_PRIV


@dataclass(frozen=True)
class HwInfo:
    """IOMMU_GET_HW_INFO's answer for one bound device."""

    type: HwInfoType | int
    capabilities: HwCaps
    max_pasid_log2: int
    #: The driver-specific data (``struct iommu_hw_info_vtd`` for INTEL_VTD), as much as the
    #: kernel has.
    data: bytes

    @property
    def dirty_tracking(self) -> bool:
        return bool(self.capabilities & HwCaps.DIRTY_TRACKING)

    def _vtd(self) -> Any:
        if self.type != HwInfoType.INTEL_VTD or len(self.data) < ffi.sizeof("struct iommu_hw_info_vtd"):
            return None
        buf = ffi.new("char[]", self.data)
        return ffi.cast("struct iommu_hw_info_vtd *", buf)[0]

    @property
    def vtd_cap_reg(self) -> int | None:
        v = self._vtd()
        return None if v is None else int(v.cap_reg)

    @property
    def vtd_ecap_reg(self) -> int | None:
        v = self._vtd()
        return None if v is None else int(v.ecap_reg)


@hex_repr('iova_alignment')
@dataclass(frozen=True)
class IoasInfo:
    """IOMMU_IOAS_IOVA_RANGES: the usable ranges (``end`` inclusive) and the alignment every
    mapping needs. Shaped like :class:`~pyvfio.vfio.type1.Type1Info` for DmaMapper."""

    iova_ranges: tuple[IovaRange, ...]
    iova_alignment: int

    @property
    def min_pgsize(self) -> int:
        """The granule pyvfio allocates in: the IOAS alignment, at least one CPU page."""
        return max(self.iova_alignment, PAGE_SIZE)

    @property
    def iova_pgsizes(self) -> int:
        """Page sizes to align IOVAs for (a bitmap like type1's ``iova_pgsizes``). iommufd does
        not report the IOMMU's page sizes: this is the granule plus 2 MiB and 1 GiB, the large
        pages of x86 and arm64 IOMMUs (aligning for a size the IOMMU lacks costs nothing)."""
        return self.min_pgsize | (2 << 20) | (1 << 30)

    def usable(self, iova: int, size: int) -> bool:
        return any(r.contains(iova, size) for r in self.iova_ranges)


def _memlock_hint(size: int) -> str:
    """The ENOMEM hint of a map (or an attach that pins): the limit and the amounts."""
    return (f"pinning {size} bytes would exceed RLIMIT_MEMLOCK ({memlock_limit()}; VmLck {vmlck()}, "
            f"VmPin {vmpin()} bytes). Without CAP_IPC_LOCK iommufd charges pins to the "
            "user's locked memory (IOMMU_OPTION_RLIMIT_MODE 0) or to this process's VmLck (mode 1): "
            "raise the limit (ulimit -l, prlimit --memlock) or run with CAP_IPC_LOCK")


def _cmd(ctype: str) -> Any:
    c = ffi.new(ctype + " *")
    c.size = ffi.sizeof(ctype)
    return c


class HwPagetable:
    """A HWPT made by :meth:`IommuFd.hwpt_alloc`; attach devices to it by its ``id``.

    Threads: ``get_dirty_bitmap``/``dirty_pages`` may run concurrently (fresh arguments; with
    the default ``clear=True`` each bit is reported to one caller only); ``destroy``: one thread.
    """

    def __init__(self, iommufd: IommuFd, hwpt_id: int, ioas: "Ioas", *, dirty_tracking: bool) -> None:
        self.iommufd = iommufd
        self.id = hwpt_id
        self.ioas = ioas
        self.dirty_tracking_capable = dirty_tracking
        self.closed = False

    def _ioctl(self, request: I.Request, arg: Any) -> int:
        """``request`` on the iommufd's fd (the HWPT is an object id inside it)."""
        return self.iommufd.backend.ioctl(self.iommufd.fileno(), request, arg)

    def set_dirty_tracking(self, enable: bool) -> None:
        """IOMMU_HWPT_SET_DIRTY_TRACKING; enabling clears the dirty bits first.
        UnsupportedError (EOPNOTSUPP) for a HWPT allocated without DIRTY_TRACKING."""
        c = _cmd("struct iommu_hwpt_set_dirty_tracking")
        c.hwpt_id = self.id
        c.flags = I.IOMMU_HWPT_DIRTY_TRACKING_ENABLE if enable else 0
        self._ioctl(I.IOMMU_HWPT_SET_DIRTY_TRACKING, c)

    def get_dirty_bitmap(self, iova: int, length: int, *, page_size: int = PAGE_SIZE,
                         clear: bool = True, out: np.ndarray | None = None) -> np.ndarray:
        """IOMMU_HWPT_GET_DIRTY_BITMAP over [iova, iova+length): one bit per ``page_size``
        (bit i = page at iova + i*page_size) in uint64 words; the bits are cleared unless
        ``clear=False`` (NO_CLEAR). Checked before the syscall: page_size a power of two,
        iova and length multiples of it (AlignmentError/RangeError)."""
        if page_size <= 0 or page_size & (page_size - 1):
            raise ArgumentError(f"page_size must be a power of two, not {page_size:#x}")
        if length <= 0 or iova < 0 or iova + length - 1 > U64_MAX:
            raise RangeError(f"range {iova:#x}+{length:#x} is empty or wraps")
        if (iova | length) & (page_size - 1):
            raise AlignmentError(f"iova {iova:#x} and length {length:#x} must be multiples of "
                                 f"page_size {page_size:#x}")
        nwords = (length // page_size + 63) // 64
        words = np.zeros(nwords, dtype=np.uint64) if out is None else out
        if words.dtype != np.uint64 or words.size < nwords or not words.flags.c_contiguous:
            raise ArgumentError(f"out must be a contiguous uint64 array of at least {nwords} words")
        words[:nwords] = 0
        c = _cmd("struct iommu_hwpt_get_dirty_bitmap")
        c.hwpt_id, c.iova, c.length, c.page_size = self.id, iova, length, page_size
        c.flags = 0 if clear else I.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR
        c.data = int(ffi.cast("uintptr_t", ffi.from_buffer(words)))
        self._ioctl(I.IOMMU_HWPT_GET_DIRTY_BITMAP, c)
        return words[:nwords]

    def dirty_pages(self, iova: int, length: int, *, page_size: int = PAGE_SIZE,
                    clear: bool = True) -> list[int]:
        """Indexes of the dirty pages (relative to ``iova``) of :meth:`get_dirty_bitmap`."""
        words = self.get_dirty_bitmap(iova, length, page_size=page_size, clear=clear)
        bits = np.unpackbits(words.view(np.uint8), bitorder="little" if sys.byteorder == "little" else "big")
        return [int(i) for i in np.flatnonzero(bits[: length // page_size])]

    def destroy(self) -> None:
        """IOMMU_DESTROY of this HWPT (EBUSY while a device is attached). Idempotent."""
        if self.closed:
            return
        if not self.iommufd.closed:
            self.iommufd.destroy(self.id)
        self.closed = True
        if self in self.iommufd.hwpts:
            self.iommufd.hwpts.remove(self)

    close = destroy

    def __repr__(self) -> str:
        return f"<HwPagetable id={self.id} ioas={self.ioas.id}>"


class Ioas(MappingTable, Closeable):
    """An IO address space of an :class:`IommuFd` (IOMMU_IOAS_ALLOC).

    Two levels like :class:`~pyvfio.vfio.type1.Type1Iommu`: ``map_raw``/``unmap_raw`` are one
    ioctl each with no checks; ``map``/``unmap``/``unmap_all``/``copy`` check arguments first and
    return :class:`DmaMapping` handles that keep their buffer alive until unmapped.

    Threads: ``map_raw``/``unmap_raw``/``map``/``unmap``/``copy`` pack a fresh argument per call
    and may run concurrently for distinct IOVAs (the kernel serialises the IOAS; kernel-chosen
    IOVAs never collide). ``info`` fills a cache (a race stores the same answer).
    ``allow_iovas``, ``unmap_all`` and ``close`` must not overlap other calls.
    """

    def __init__(self, iommufd: IommuFd, ioas_id: int) -> None:
        self.iommufd = iommufd
        self.id = ioas_id
        self.backend = iommufd.backend
        self.mappings: dict[int, DmaMapping] = {}
        self._info: IoasInfo | None = None
        self.closed = False

    def _ioctl(self, request: I.Request, arg: Any) -> int:
        """``request`` on the iommufd's fd (the IOAS is an object id inside it)."""
        if self.closed:
            raise StateError(f"IOAS {self.id} is destroyed")
        return self.backend.ioctl(self.iommufd.fileno(), request, arg)

    def invalidate(self) -> None:
        """Forget the cached IOVA ranges (a device attached or detached)."""
        self._info = None

    # -- ranges ----------------------------------------------------------------------------
    def info(self, *, refresh: bool = False) -> IoasInfo:
        """IOMMU_IOAS_IOVA_RANGES: called with room for 8 ranges, again with the number the
        kernel reports when that was too few (EMSGSIZE). Cached until a pyvfio attach/detach
        or ``refresh=True``."""
        if self._info is not None and not refresh:
            return self._info
        room = 8
        for _ in range(_MAX_RANGES_RETRIES):
            arr = ffi.new("struct iommu_iova_range[]", room)
            c = _cmd("struct iommu_ioas_iova_ranges")
            c.ioas_id, c.num_iovas = self.id, room
            c.allowed_iovas = int(ffi.cast("uintptr_t", arr))
            try:
                self._ioctl(I.IOMMU_IOAS_IOVA_RANGES, c)
            except PyvfioError as e:
                if e.errno == errno.EMSGSIZE and c.num_iovas > room:
                    room = int(c.num_iovas)
                    continue
                raise
            n = int(c.num_iovas)
            ranges = tuple(IovaRange(int(arr[i].start), int(arr[i].last)) for i in range(n))
            self._info = IoasInfo(ranges, int(c.out_iova_alignment))
            return self._info
        raise PyvfioError(errno.EPROTO, "IOVA_RANGES keeps growing", op=I.IOMMU_IOAS_IOVA_RANGES.name,
                          path=self.iommufd.path)

    @property
    def iova_ranges(self) -> tuple[IovaRange, ...]:
        return self.info().iova_ranges

    def allow_iovas(self, ranges: Iterable[Any]) -> None:
        """IOMMU_IOAS_ALLOW_IOVAS: replace the allowed list (kernel-chosen IOVAs stay inside it,
        and an attach that would reserve part of it fails). ``ranges``: IovaRange or (start,
        last) pairs, inclusive. ArgumentError for empty or overlapping ranges (before the
        syscall); EADDRINUSE when one intersects a reserved range."""
        pairs = [(r.start, r.end) if hasattr(r, "start") else (int(r[0]), int(r[1])) for r in ranges]
        for s, e in pairs:
            if not 0 <= s < e <= U64_MAX:
                raise RangeError(f"allowed range {s:#x}-{e:#x}: need 0 <= start < last < 2**64")
        srt = sorted(pairs)
        for (_a, b), (c, _d) in zip(srt, srt[1:]):
            if c <= b:
                raise ArgumentError(f"allowed ranges overlap at {c:#x}")
        arr = ffi.new("struct iommu_iova_range[]", max(len(pairs), 1))
        for i, (s, e) in enumerate(pairs):
            arr[i].start, arr[i].last = s, e
        c = _cmd("struct iommu_ioas_allow_iovas")
        c.ioas_id, c.num_iovas = self.id, len(pairs)
        c.allowed_iovas = int(ffi.cast("uintptr_t", arr)) if pairs else 0
        self._ioctl(I.IOMMU_IOAS_ALLOW_IOVAS, c)
        self._info = None

    # -- raw -------------------------------------------------------------------------------
    def map_raw(self, vaddr: int, iova: int | None, size: int, *,
                flags: int = I.IOMMU_IOAS_MAP_READABLE | I.IOMMU_IOAS_MAP_WRITEABLE) -> int:
        """IOMMU_IOAS_MAP as is: ``size`` bytes at ``vaddr`` to ``iova`` (FIXED_IOVA), or where
        the kernel chooses with ``iova=None``. The argument order is that of every IOMMU's raw
        call (``Type1Iommu.map_dma(vaddr, iova, size)``, sPAPR's too); ``flags`` are
        IOMMU_IOAS_MAP_READABLE/WRITEABLE. Returns the IOVA. Errors: EEXIST (overlap), EINVAL
        (reserved/unaligned/zero size), ENOSPC (no free IOVA), ENOMEM (RLIMIT_MEMLOCK), EFAULT
        (memory not mapped)."""
        c = _cmd("struct iommu_ioas_map")
        fill(c, ioas_id=self.id,
             flags=as_int(flags, "flags") | (I.IOMMU_IOAS_MAP_FIXED_IOVA if iova is not None else 0),
             user_va=vaddr, length=size, iova=0 if iova is None else iova)
        try:
            self._ioctl(I.IOMMU_IOAS_MAP, c)
        except PyvfioError as e:
            if e.errno == errno.ENOMEM:
                e.hint = _memlock_hint(size)
            raise
        return int(c.iova)

    def unmap_raw(self, iova: int, size: int) -> int:
        """IOMMU_IOAS_UNMAP as is; returns the bytes the kernel unmapped. ``iova=0,
        size=2**64-1`` unmaps everything. ENOENT: the range cuts a mapping, or nothing is
        mapped inside it."""
        c = fill(_cmd("struct iommu_ioas_unmap"), ioas_id=self.id, iova=iova, length=size)
        self._ioctl(I.IOMMU_IOAS_UNMAP, c)
        return int(c.length)

    #: The raw calls under the names type1 and sPAPR use: ``map_dma(vaddr, iova, size)``,
    #: ``unmap_dma(iova, size)``.
    map_dma = map_raw
    unmap_dma = unmap_raw

    # -- checked ---------------------------------------------------------------------------
    def check(self, iova: int, size: int) -> None:
        """ArgumentError subclasses for what the kernel would refuse at a fixed IOVA."""
        iova, size = as_int(iova, "iova"), as_int(size, "size")
        info = self.info()
        if size <= 0:
            raise RangeError(f"size must be positive, not {size}")
        if iova < 0 or iova + size - 1 > U64_MAX:
            raise RangeError(f"IOVA range {iova:#x}+{size:#x} is negative or wraps around")
        align = info.iova_alignment
        if (iova | size) & (align - 1):
            raise AlignmentError(f"iova {iova:#x} / size {size:#x} not aligned to the IOAS "
                                 f"alignment {align:#x}")
        if not info.usable(iova, size):
            allowed = ", ".join(f"{r.start:#x}-{r.end:#x}" for r in info.iova_ranges)
            raise RangeError(f"IOVA range {iova:#x}-{iova + size - 1:#x} is not inside the usable "
                             f"IOVA ranges ({allowed}); reserved windows such as MSI cannot be mapped")

    def map(self, buffer: Any, iova: int | None = None, *, size: int | None = None,
            offset: int = 0, read: bool = True, write: bool = True) -> DmaMapping:
        """Map ``buffer`` (a DmaBuffer, or an int address with ``size=``) at ``iova`` or, with
        ``iova=None``, where the kernel chooses. Fixed IOVAs are checked against the IOAS's
        ranges first. Returns a DmaMapping (its ``iova`` is where it landed)."""
        vaddr, n = buffer_span(buffer, size, offset)
        if not (read or write):
            raise ArgumentError("a mapping needs read=True and/or write=True")
        if n <= 0:
            raise RangeError(f"size must be positive, not {n}")
        if iova is not None:
            self.check(iova, n)
        flags = ((I.IOMMU_IOAS_MAP_READABLE if read else 0)
                 | (I.IOMMU_IOAS_MAP_WRITEABLE if write else 0))
        at = self.map_raw(vaddr, iova, n, flags=flags)
        dflags = (DmaFlags.READ if read else DmaFlags(0)) | (DmaFlags.WRITE if write else DmaFlags(0))
        return self._adopt(at, n, vaddr, dflags, buffer)

    def _adopt(self, iova: int, n: int, vaddr: int, dflags: DmaFlags, buffer: Any) -> DmaMapping:
        mapping = DmaMapping(self, iova, n, vaddr, dflags, buffer)
        try:
            pin(buffer, mapping)
        except BaseException:
            self.unmap_raw(iova, n)
            raise
        self.mappings[iova] = mapping
        return mapping

    def copy(self, source: DmaMapping, iova: int | None = None, *, offset: int = 0,
             size: int | None = None, read: bool = True, write: bool = True) -> DmaMapping:
        """IOMMU_IOAS_COPY: map into this IOAS the pages behind ``size`` bytes at ``offset``
        of ``source`` (a live mapping of another IOAS, or of this one), at ``iova`` or where
        the kernel chooses. The new handle keeps the source buffer alive. EPERM: ``write``
        over a source mapped read-only."""
        if source.closed or not isinstance(source.iommu, Ioas):
            raise StateError(f"{source!r} is not a live IOAS mapping")
        n = source.size - offset if size is None else size
        if offset < 0 or n <= 0 or offset + n > source.size:
            raise RangeError(f"{offset:#x}+{n:#x} is outside the source mapping (size {source.size:#x})")
        if not (read or write):
            raise ArgumentError("a mapping needs read=True and/or write=True")
        if iova is not None:
            self.check(iova, n)
        c = _cmd("struct iommu_ioas_copy")
        c.flags = ((I.IOMMU_IOAS_MAP_READABLE if read else 0) | (I.IOMMU_IOAS_MAP_WRITEABLE if write else 0)
                   | (I.IOMMU_IOAS_MAP_FIXED_IOVA if iova is not None else 0))
        c.dst_ioas_id, c.src_ioas_id = self.id, source.iommu.id
        c.length, c.dst_iova, c.src_iova = n, iova or 0, source.iova + offset
        self._ioctl(I.IOMMU_IOAS_COPY, c)
        dflags = (DmaFlags.READ if read else DmaFlags(0)) | (DmaFlags.WRITE if write else DmaFlags(0))
        return self._adopt(int(c.dst_iova), n, source.vaddr + offset, dflags, source.buffer)

    def unmap(self, mapping: DmaMapping) -> None:
        """IOMMU_IOAS_UNMAP of exactly ``mapping``; ShortUnmapError if the kernel removed less
        (the handle is released either way)."""
        if as_mapping(mapping).closed:
            return
        if mapping.iommu is not self:  # type: ignore[comparison-overlap]
            raise ArgumentError(f"{mapping!r} belongs to another IOAS or IOMMU")
        try:
            done = self.unmap_raw(mapping.iova, mapping.size)
        except PyvfioError as e:
            if e.errno == errno.ENOENT:  # already gone (a raw unmap_all): release the handle
                self._forget(mapping)
            raise
        self._forget(mapping)
        if done != mapping.size:
            raise ShortUnmapError(errno.EIO, f"unmapped {done:#x} of {mapping.size:#x} bytes at "
                                  f"{mapping.iova:#x}", op=I.IOMMU_IOAS_UNMAP.name, path=self.iommufd.path)

    def unmap_all(self) -> int:
        """IOMMU_IOAS_UNMAP with iova 0 and length 2**64-1: everything goes. Returns the bytes
        unmapped; ShortUnmapError if less than pyvfio's own mappings add up to."""
        expected = sum(m.size for m in self.mappings.values())
        done = self.unmap_raw(0, U64_MAX)
        for m in list(self.mappings.values()):
            self._forget(m)
        if done < expected:
            raise ShortUnmapError(errno.EIO, f"unmap all removed {done:#x} bytes, pyvfio had "
                                  f"{expected:#x} mapped", op=I.IOMMU_IOAS_UNMAP.name, path=self.iommufd.path)
        return done

    # -- options ---------------------------------------------------------------------------
    @property
    def huge_pages(self) -> bool:
        """IOMMU_OPTION_HUGE_PAGES of this IOAS (True: the IOMMU may use large pages)."""
        return bool(self.iommufd.option(I.IOMMU_OPTION_HUGE_PAGES, object_id=self.id))

    @huge_pages.setter
    def huge_pages(self, enable: bool) -> None:
        self.iommufd.option(I.IOMMU_OPTION_HUGE_PAGES, object_id=self.id, value=1 if enable else 0)
        self._info = None

    # -- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        """Unmap every pyvfio mapping, then IOMMU_DESTROY the IOAS (EBUSY while a HWPT or an
        attached device uses it). Idempotent."""
        if self.closed:
            return
        try:
            if self.mappings and not self.iommufd.closed:
                self.unmap_all()
        finally:
            for m in list(self.mappings.values()):
                self._forget(m)
        if not self.iommufd.closed:
            self.iommufd.destroy(self.id)
        self.closed = True
        if self in self.iommufd.ioases:
            self.iommufd.ioases.remove(self)

    destroy = close


    def __repr__(self) -> str:
        return f"<Ioas id={self.id} mappings={len(self.mappings)}>"


register_hint(I.IOMMU_IOAS_MAP.name, errno.EEXIST,
              "the IOVA range overlaps an existing mapping of this IOAS: unmap it first or let the "
              "kernel choose the IOVA")
register_hint(I.IOMMU_IOAS_MAP.name, errno.EINVAL,
              "zero length, not aligned to the IOAS alignment, or the IOVA is reserved (the MSI "
              "window, outside the IOMMU aperture): see Ioas.info().iova_ranges")
register_hint(I.IOMMU_IOAS_MAP.name, errno.ENOSPC, "no free IOVA block of that size (inside the allowed IOVAs)")
register_hint(I.IOMMU_IOAS_MAP.name, errno.ENOMEM,
              "pinning would exceed RLIMIT_MEMLOCK (the process lacks CAP_IPC_LOCK): raise the limit "
              "(ulimit -l / prlimit --memlock) or run with CAP_IPC_LOCK")
register_hint(I.IOMMU_IOAS_MAP.name, errno.EFAULT, "the user address range is not mapped in this process")
register_hint(I.IOMMU_IOAS_UNMAP.name, errno.ENOENT,
              "iommufd unmaps whole mappings only: the range cuts a mapping, or nothing is mapped in it")
register_hint(I.IOMMU_IOAS_COPY.name, errno.ENOENT, "the source range is not fully mapped in the source IOAS")
register_hint(I.IOMMU_IOAS_COPY.name, errno.EPERM, "WRITEABLE copy of memory the source mapped read-only")
register_hint(I.IOMMU_IOAS_ALLOW_IOVAS.name, errno.EADDRINUSE,
              "an allowed range intersects a reserved one (MSI window or outside the aperture)")
register_hint(I.IOMMU_DESTROY.name, errno.EBUSY,
              "the object is still in use: detach devices and destroy HWPTs before their IOAS")
register_hint(I.IOMMU_DESTROY.name, errno.ENOENT, "no object with that id in this iommufd")
register_hint(I.IOMMU_OPTION.name, errno.EPERM, "setting RLIMIT_MODE needs CAP_SYS_RESOURCE")
register_hint(I.IOMMU_OPTION.name, errno.EBUSY, "RLIMIT_MODE can only change before any object exists")
register_hint(I.IOMMU_HWPT_ALLOC.name, errno.EOPNOTSUPP,
              "the IOMMU driver does not offer this (dirty tracking, nesting, user domains)")
register_hint(I.IOMMU_HWPT_SET_DIRTY_TRACKING.name, errno.EOPNOTSUPP,
              "the HWPT was not allocated with IOMMU_HWPT_ALLOC_DIRTY_TRACKING")
register_hint(I.IOMMU_HWPT_GET_DIRTY_BITMAP.name, errno.EOPNOTSUPP,
              "the HWPT was not allocated with IOMMU_HWPT_ALLOC_DIRTY_TRACKING")
