"""The type1 (v2) IOMMU: info with its capability chain, DMA map/unmap, vaddr update.

:class:`Type1Iommu` is what ``Container.set_iommu()`` returns on x86/arm. Two levels:

* ``map_dma`` / ``unmap_dma``: one ioctl each, no checks beyond the struct (what a test of the
  kernel's rules wants);
* ``map`` / ``unmap`` / ``unmap_all``: checked before the syscall (alignment to the smallest IOMMU
  page, IOVA inside the reported ranges — the MSI window and other reserved regions are refused
  with RangeError), returning :class:`DmaMapping` handles that keep their buffer alive until
  unmapped; a short unmap raises :class:`ShortUnmapError`.

Safety: while a mapping exists the device may read/write the mapped memory at any time; the
buffer must stay allocated and must not be reused for anything else until ``unmap()`` returns.
:class:`DmaMapping` enforces the first part by holding a reference to its buffer.

Example (mock)::

    >>> from pyvfio.seam.mock import MockBackend
    >>> from pyvfio.services.dma import DmaBuffer
    >>> from pyvfio.vfio import Container, Group
    >>> with Container(backend=MockBackend()) as c:
    ...     _ = c.attach(Group(3, backend=c.backend))
    ...     iommu = c.set_iommu("TYPE1v2")
    ...     buf = DmaBuffer(4096)
    ...     with iommu.map(buf, iova=0x100000) as m:
    ...         (m.iova, m.size)
    (1048576, 4096)
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass, field
from typing import Any

from .. import ioctls
from ..core.buffer import buffer_span, pin, unpin
from ..core.iova import IovaRange
from ..core.mapping import DmaFlags, DmaMapping, MappingTable, ShortUnmapError, as_mapping
from ..core.memory import memory_object_mismatch
from ..errors import (AlignmentError, ArgumentError, PyvfioError, RangeError, StateError,
                      UnsupportedError, error_from_errno, register_hint)
from ..uapi import ffi
from ..uapi.args import as_int
from ..uapi.pack import TYPE1_DMA_MAP, TYPE1_DMA_UNMAP, TYPE1_DMA_UNMAP_SIZE_AT, U64
from ..util.proc import memlock_limit, vmlck
from ..util.hexrepr import hex_repr
from .caps import CapChainError, get_info
from .container import Container, IommuBase, register_iommu

U64_MAX = (1 << 64) - 1
_SZ_MAP = TYPE1_DMA_MAP.size
_SZ_UNMAP = TYPE1_DMA_UNMAP.size

_MAP_DMA = ioctls.VFIO_IOMMU_MAP_DMA
_UNMAP_DMA = ioctls.VFIO_IOMMU_UNMAP_DMA
_GET_INFO = ioctls.VFIO_IOMMU_GET_INFO
_UNMAP_SIZE_AT = TYPE1_DMA_UNMAP_SIZE_AT
# hot-path callables bound once (module globals are cheaper than attribute chains)
_pack_map = TYPE1_DMA_MAP.pack
_pack_unmap = TYPE1_DMA_UNMAP.pack
_unpack_u64 = U64.unpack_from

_FLAGS = {(True, True): DmaFlags.READ | DmaFlags.WRITE, (True, False): DmaFlags.READ,
          (False, True): DmaFlags.WRITE}
_RW = _FLAGS[True, True]


@hex_repr('flags', 'pgsize_bitmap', 'max_dirty_bitmap_size')
@dataclass(frozen=True)
class MigrationCap:
    """VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION: dirty-page tracking parameters."""

    flags: int
    pgsize_bitmap: int
    max_dirty_bitmap_size: int


@hex_repr('offset')
@dataclass(frozen=True)
class CapHeader:
    id: int
    version: int
    offset: int


@hex_repr('flags', 'iova_pgsizes')
@dataclass(frozen=True)
class Type1Info:
    """VFIO_IOMMU_GET_INFO, with the whole capability chain parsed."""

    flags: int
    iova_pgsizes: int
    iova_ranges: tuple[IovaRange, ...]
    dma_avail: int | None
    migration: MigrationCap | None
    caps: tuple[CapHeader, ...] = field(default=())

    @property
    def min_pgsize(self) -> int:
        """The smallest IOMMU page size: the alignment every map/unmap needs."""
        p = self.iova_pgsizes
        return (p & -p) if p else 4096

    def usable(self, iova: int, size: int) -> bool:
        """[iova, iova+size) lies inside one reported IOVA range (ranges absent: all usable)."""
        if not self.iova_ranges:
            return True
        return any(r.contains(iova, size) for r in self.iova_ranges)


@register_iommu
class Type1Iommu(MappingTable, IommuBase):
    """The type1 IOMMU of a container (VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU, nesting).

    Threads: ``map_dma``/``unmap_dma`` and ``map``/``unmap`` of distinct IOVAs may run
    concurrently from several threads: each call packs its own argument (no shared struct) and
    the kernel serialises the container. ``info()`` may race with itself harmlessly (both
    store the same answer). ``unmap_all``, ``update_vaddr`` and ``close`` must not run while
    other threads map or unmap through this object (they walk :attr:`mappings`).
    """

    TYPES = (ioctls.VFIO_TYPE1_IOMMU, ioctls.VFIO_TYPE1v2_IOMMU, ioctls.VFIO_TYPE1_NESTING_IOMMU)
    #: VFIO_IOMMU_DIRTY_PAGES tracking as pyvfio last set it (kept by :mod:`pyvfio.vfio.dirty`).
    dirty_tracking = False

    def __init__(self, container: Container, iommu_type: int) -> None:
        super().__init__(container, iommu_type)
        self.v2 = iommu_type != ioctls.VFIO_TYPE1_IOMMU
        self._info: Type1Info | None = None
        self._pgmask = 0xFFF
        self._spans: tuple[tuple[int, int], ...] = ()
        #: Live mappings made through map(), by IOVA.
        self.mappings: dict[int, DmaMapping] = {}
        # Hot path of map/unmap: the arguments are packed into a fresh bytearray per call
        # (thread-safe without a lock) and go to the seam's fast entry, which hands the bytes
        # to the kernel (real) or decodes them with the ffi struct (mock).
        self._fd = container.fileno()
        self._backend_ioctl = self.backend.ioctl

    # -- info -----------------------------------------------------------------------------
    def info(self, *, refresh: bool = False) -> Type1Info:
        """VFIO_IOMMU_GET_INFO with the capability chain (re-called with the argsz the kernel
        asks for). Cached; ``refresh=True`` re-reads (DMA_AVAIL changes with every map)."""
        if self._info is not None and not refresh:
            return self._info
        op = _GET_INFO.name
        raw, info, caps = get_info(lambda a: self._ioctl(_GET_INFO, a),
                                   "struct vfio_iommu_type1_info", ioctls.VFIO_IOMMU_INFO_CAPS,
                                   op=op, path=self.container.path)
        size = ffi.sizeof(raw)
        ranges: list[IovaRange] = []
        avail: int | None = None
        mig: MigrationCap | None = None
        headers = [CapHeader(c.id, c.version, c.offset) for c in caps]
        for h in headers:
            at = ffi.cast("char *", raw) + h.offset
            if h.id == ioctls.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
                cap = ffi.cast("struct vfio_iommu_type1_info_cap_iova_range *", at)
                need = (ffi.sizeof("struct vfio_iommu_type1_info_cap_iova_range")
                        + cap.nr_iovas * ffi.sizeof("struct vfio_iova_range"))
                if h.offset + need > size:
                    raise CapChainError(errno.EPROTO, f"IOVA_RANGE cap with {cap.nr_iovas} "
                                        "ranges runs past the buffer", op=op)
                ranges = [IovaRange(int(cap.iova_ranges[i].start), int(cap.iova_ranges[i].end))
                          for i in range(cap.nr_iovas)]
            elif h.id == ioctls.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
                if h.offset + ffi.sizeof("struct vfio_iommu_type1_info_dma_avail") > size:
                    raise CapChainError(errno.EPROTO, "DMA_AVAIL cap truncated", op=op)
                avail = int(ffi.cast("struct vfio_iommu_type1_info_dma_avail *", at).avail)
            elif h.id == ioctls.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION:
                if h.offset + ffi.sizeof("struct vfio_iommu_type1_info_cap_migration") > size:
                    raise CapChainError(errno.EPROTO, "MIGRATION cap truncated", op=op)
                c = ffi.cast("struct vfio_iommu_type1_info_cap_migration *", at)
                mig = MigrationCap(int(c.flags), int(c.pgsize_bitmap), int(c.max_dirty_bitmap_size))
        self._info = Type1Info(int(info.flags), int(info.iova_pgsizes), tuple(ranges), avail, mig,
                               tuple(headers))
        # what check() needs, in plain ints (map() is a hot path)
        self._pgmask = self._info.min_pgsize - 1
        self._spans = tuple((r.start, r.end) for r in ranges) or ((0, U64_MAX),)
        return self._info

    # -- raw requests -----------------------------------------------------------------------
    def map_dma(self, vaddr: int, iova: int, size: int, flags: int = 3) -> None:
        """VFIO_IOMMU_MAP_DMA as is (no pre-checks). ``flags``: DmaFlags (default READ|WRITE).

        Errors: EINVAL (size 0, unaligned, outside the IOVA ranges, no IOMMU set), EEXIST
        (overlaps a mapping), ENOSPC (dma_entry_limit reached), ENOMEM (RLIMIT_MEMLOCK), EFAULT
        (vaddr not mapped).
        """
        try:
            # a fresh argument per call: no shared buffer, so threads need no lock
            buf = bytearray(_pack_map(_SZ_MAP, flags, vaddr, iova, size))
        except struct.error:
            raise RangeError(f"map_dma arguments out of range: vaddr={vaddr!r} iova={iova!r} "
                             f"size={size!r} flags={flags!r} (unsigned 64/32-bit)") from None
        try:
            self._backend_ioctl(self._fd, _MAP_DMA, buf)
        except OSError as e:
            raise self._map_error(e, size) from None

    def _map_error(self, e: OSError, size: int) -> PyvfioError:
        err = e if isinstance(e, PyvfioError) else error_from_errno(
            e.errno or errno.EIO, op=_MAP_DMA.name, path=self.container.path)
        if err.errno in (errno.ENOMEM, errno.ENOSPC):
            err.hint = self._map_hint(err.errno, size) or err.hint
        return err

    def unmap_dma(self, iova: int, size: int, flags: int = 0) -> int:
        """VFIO_IOMMU_UNMAP_DMA as is; returns the size the kernel reports unmapped.

        v2: EINVAL when the range bisects a mapping; 0 when no mapping lies inside.
        """
        try:
            buf = bytearray(_pack_unmap(_SZ_UNMAP, flags, iova, size))
        except struct.error:
            raise RangeError(f"unmap_dma arguments out of range: iova={iova!r} size={size!r} "
                             f"flags={flags!r}") from None
        try:
            self._backend_ioctl(self._fd, _UNMAP_DMA, buf)
        except OSError as e:
            if isinstance(e, PyvfioError):
                raise
            raise error_from_errno(e.errno or errno.EIO, op=_UNMAP_DMA.name,
                                   path=self.container.path) from None
        return _unpack_u64(buf, _UNMAP_SIZE_AT)[0]  # type: ignore[no-any-return]

    def _map_hint(self, err: int, size: int) -> str | None:
        if err == errno.ENOMEM:
            lim = memlock_limit()
            locked = vmlck()
            return (f"RLIMIT_MEMLOCK is {lim}; {locked} bytes are already locked (VmLck) and this "
                    f"map needs {size} more ({locked + size} in total): raise the limit (ulimit -l, "
                    "prlimit --memlock, systemd LimitMEMLOCK=) or run with CAP_IPC_LOCK")
        if err == errno.ENOSPC:
            path = os.path.join(self.backend.sysfs_root, "module", "vfio_iommu_type1",
                                "parameters", "dma_entry_limit")
            try:
                with open(path) as f:
                    limit = f.read().strip()
            except OSError:
                limit = "?"
            return (f"vfio_iommu_type1 dma_entry_limit ({limit}) mappings reached in this container "
                    f"({len(self.mappings)} made through pyvfio): unmap some, merge buffers into "
                    f"larger mappings, or raise {path} (read at VFIO_SET_IOMMU)")
        return None

    # -- checked API ------------------------------------------------------------------------------
    def check(self, iova: int, size: int, vaddr: int | None = None) -> None:
        """Raise ArgumentError subclasses for what the kernel would refuse: zero size,
        misalignment to the smallest IOMMU page, wrap-around, IOVA outside the usable ranges."""
        iova, size = as_int(iova, "iova"), as_int(size, "size")
        if vaddr is not None:
            vaddr = as_int(vaddr, "vaddr")
        info = self._info or self.info()
        last = iova + size - 1
        if size <= 0 or iova < 0 or last > U64_MAX or (iova | size | (vaddr or 0)) & self._pgmask:
            self._explain(info, iova, size, vaddr)
        for start, end in self._spans:
            if start <= iova and last <= end:
                return
        if info.iova_ranges:
            allowed = ", ".join(f"{r.start:#x}-{r.end:#x}" for r in info.iova_ranges)
            raise RangeError(f"IOVA range {iova:#x}-{iova + size - 1:#x} is not inside the usable "
                             f"IOVA ranges ({allowed}); reserved windows such as MSI cannot be mapped")

    @staticmethod
    def _explain(info: Type1Info, iova: int, size: int, vaddr: int | None) -> None:
        pg = info.min_pgsize
        if size <= 0:
            raise RangeError(f"size must be positive, not {size}")
        for what, v in (("iova", iova), ("size", size), ("vaddr", vaddr)):
            if v is not None and v & (pg - 1):
                raise AlignmentError(f"{what} {v:#x} is not aligned to the IOMMU page size {pg:#x}")
        raise RangeError(f"IOVA range {iova:#x}+{size:#x} is negative or wraps around")

    def map(self, buffer: Any, iova: int, *, size: int | None = None, offset: int = 0,
            read: bool = True, write: bool = True) -> DmaMapping:
        """Map ``buffer`` (a DmaBuffer, or an int address with ``size=``) at ``iova``.

        Checks before the syscall (ArgumentError subclasses), then VFIO_IOMMU_MAP_DMA. Returns
        a DmaMapping that keeps ``buffer`` alive until unmapped. Device access: ``read`` lets
        the device read the memory, ``write`` lets it write.
        """
        fd = self._fd
        if fd < 0:
            raise StateError("this IOMMU is closed")
        if iova.__class__ is not int:
            iova = as_int(iova, "iova")
        # the checks of buffer_span/check(), inlined for the common case (a whole buffer,
        # READ|WRITE, a valid IOVA); anything else takes the general functions, which raise the
        # same errors in the same order
        if size is None and offset == 0 and type(buffer) is not int:
            try:
                vaddr, total = buffer.addr, buffer.size
            except AttributeError:
                vaddr, n = buffer_span(buffer, size, offset)
            else:
                if getattr(buffer, "closed", False):
                    raise StateError(f"{buffer!r} is closed")
                if total < 0:
                    vaddr, n = buffer_span(buffer, size, offset)  # raises its RangeError
                vaddr, n = int(vaddr) + offset, total - offset
        else:
            vaddr, n = buffer_span(buffer, size, offset)
        if read is True and write is True:
            flags = _RW
        else:
            flags = _FLAGS.get((bool(read), bool(write)))  # type: ignore[assignment]
            if flags is None:
                raise ArgumentError("a mapping needs read=True and/or write=True")
        if self._info is None:
            self.info()
        last = iova + n - 1
        if n <= 0 or iova < 0 or last > U64_MAX or (iova | n | vaddr) & self._pgmask:
            self.check(iova, n, vaddr)  # raises the precise error
        for start, end in self._spans:
            if start <= iova and last <= end:
                break
        else:
            self.check(iova, n, vaddr)  # raises RangeError
        self.map_dma(vaddr, iova, n, flags)
        mapping = DmaMapping(self, iova, n, vaddr, flags, buffer)
        try:
            pin(buffer, mapping)
        except BaseException:  # closed meanwhile: do not leave the kernel mapping behind
            self.unmap_dma(iova, n)
            raise
        self.mappings[iova] = mapping
        return mapping

    def unmap(self, mapping: DmaMapping) -> None:
        """VFIO_IOMMU_UNMAP_DMA of exactly ``mapping``; ShortUnmapError if the kernel removed
        less (the handle is released either way: the kernel no longer maps all of it)."""
        if not as_mapping(mapping)._live:
            return
        if mapping.iommu is not self:
            raise ArgumentError(f"{mapping!r} belongs to another IOMMU")
        iova, size = mapping.iova, mapping.size
        done = self.unmap_dma(iova, size)
        self._forget(mapping)
        if done != size:
            raise ShortUnmapError(errno.EIO, f"unmapped {done:#x} of {mapping.size:#x} bytes at "
                                  f"{mapping.iova:#x}", op=_UNMAP_DMA.name, path=self.container.path,
                                  hint="something else unmapped part of this range (a raw unmap_dma "
                                       "or UNMAP_ALL?)")

    def unmap_all(self) -> int:
        """Remove every mapping of the container: VFIO_DMA_UNMAP_FLAG_ALL where the kernel has
        VFIO_UNMAP_ALL, else one unmap per known mapping. Returns the bytes unmapped;
        ShortUnmapError if less than pyvfio's own mappings add up to."""
        expected = sum(m.size for m in self.mappings.values())
        if self.container.check_extension(ioctls.VFIO_UNMAP_ALL) > 0:
            done = self.unmap_dma(0, 0, ioctls.VFIO_DMA_UNMAP_FLAG_ALL)
            for m in list(self.mappings.values()):
                self._forget(m)
        else:
            done = 0
            for m in sorted(self.mappings.values(), key=lambda m: m.iova):
                done += self.unmap_dma(m.iova, m.size)
                self._forget(m)
        if done < expected:
            raise ShortUnmapError(errno.EIO, f"UNMAP_ALL removed {done:#x} bytes, pyvfio had "
                                  f"{expected:#x} mapped", op=_UNMAP_DMA.name, path=self.container.path)
        return done

    def update_vaddr(self, mapping: DmaMapping, buffer: Any, *, offset: int = 0) -> None:
        """Give the kernel a new user address for ``mapping``'s memory (same IOVA and size)
        without unmapping it: VFIO_IOMMU_UNMAP_DMA with FLAG_VADDR (invalidate), then
        VFIO_IOMMU_MAP_DMA with FLAG_VADDR. The use is live update: the memory stays, its
        address changes (a second mapping of the same memfd, or the same memory after exec).

        The contract (linux/vfio.h): the new vaddr must address the *same memory object*. The
        kernel does not re-pin: it keeps the pages it pinned at map time, and the device goes on
        reaching them. So pyvfio checks first (``/proc/self/maps``): every byte of ``buffer``
        (``mapping.size`` bytes at ``offset``) must be a MAP_SHARED mapping of the same file,
        at the same file offset, as the memory mapped now; anything else (a private or anonymous
        buffer, another memfd, another offset) is refused with ArgumentError before any
        syscall. Updating to the very buffer already mapped is allowed (a no-op address).

        The earlier buffer stays pinned (``mapping.held``) until the mapping goes, since the
        kernel still maps its pages; ``mapping.buffer``/``vaddr`` name the new one.

        Needs the VFIO_UPDATE_VADDR extension, else UnsupportedError before the DMA ioctls. On
        6.x kernels the legacy type1 container reports 1 once the IOMMU is set (0 before
        SET_IOMMU, and 0 while an mdev/emulated device is attached); iommufd's VFIO compat
        container (drivers/iommu/iommufd/vfio_compat.c) always reports 0.

        Errors: UnsupportedError (no VFIO_UPDATE_VADDR), StateError (not a live mapping of
        this IOMMU), ArgumentError (not the same memory object; alignment/range as ``check``),
        ShortUnmapError (the invalidation covered less than the mapping); a failing MAP_DMA
        VADDR is undone by re-supplying the old vaddr, then re-raised.

        Safety: between the two ioctls the kernel holds no valid vaddr (vaddr_invalid); the
        device's DMA through the IOMMU continues, but kernel-side pinning for emulated devices
        would block. Do not unmap the new address while the mapping lives.
        """
        if not as_mapping(mapping)._live or mapping.iommu is not self:
            raise StateError(f"{mapping!r} is not a live mapping of this IOMMU")
        if self.container.check_extension(ioctls.VFIO_UPDATE_VADDR) <= 0:
            raise UnsupportedError(errno.EOPNOTSUPP, "the kernel does not offer VFIO_UPDATE_VADDR",
                                   op=ioctls.VFIO_CHECK_EXTENSION.name, path=self.container.path,
                                   hint="iommufd's VFIO compat container and type1 containers with "
                                        "an emulated (mdev) device report 0: unmap and map again "
                                        "instead")
        vaddr, n = buffer_span(buffer, mapping.size, offset)
        self.check(mapping.iova, n, vaddr)
        old = mapping.vaddr
        if not (buffer is mapping.buffer and vaddr == old):
            why = memory_object_mismatch(self.backend, old, vaddr, n)
            if why is not None:
                raise ArgumentError(f"update_vaddr of {mapping!r}: {why}; VFIO_DMA_MAP_FLAG_VADDR "
                                    "needs the same memory object at the new address (the kernel "
                                    "keeps DMA on the pages it pinned)")
        pin(buffer, mapping)  # refused if the new buffer is closed: nothing done yet
        try:
            done = self.unmap_dma(mapping.iova, mapping.size, ioctls.VFIO_DMA_UNMAP_FLAG_VADDR)
        except BaseException:
            unpin(buffer, mapping)
            raise
        if done != mapping.size:
            unpin(buffer, mapping)
            raise ShortUnmapError(errno.EIO, f"vaddr invalidation covered {done:#x} of {mapping.size:#x}",
                                  op=_UNMAP_DMA.name, path=self.container.path)
        try:
            self.map_dma(vaddr, mapping.iova, mapping.size, DmaFlags.VADDR)
        except BaseException:
            unpin(buffer, mapping)
            try:  # give the kernel its old (still valid) address back
                self.map_dma(old, mapping.iova, mapping.size, DmaFlags.VADDR)
            except OSError:
                pass
            raise
        mapping._held = (*mapping._held, mapping.buffer)
        mapping.buffer, mapping.vaddr = buffer, vaddr

    def close(self) -> None:
        """Unmap every mapping made through this object (idempotent); the object is unusable
        afterwards (its cached container fd is dropped, so a recycled fd number is never hit)."""
        try:
            if self.mappings and not self.container.closed and self._fd >= 0:
                self.unmap_all()
        finally:
            for m in list(self.mappings.values()):
                self._forget(m)
            self._fd = -1

    def __repr__(self) -> str:
        return f"<Type1Iommu type={self.type} mappings={len(self.mappings)}>"


register_hint(_MAP_DMA.name, errno.ENOMEM,
              "pinning the memory would exceed RLIMIT_MEMLOCK (the process lacks CAP_IPC_LOCK): "
              "raise the limit (ulimit -l / prlimit --memlock) or run with CAP_IPC_LOCK")
register_hint(_MAP_DMA.name, errno.ENOSPC,
              "vfio_iommu_type1's dma_entry_limit is reached "
              "(/sys/module/vfio_iommu_type1/parameters/dma_entry_limit)")
register_hint(_MAP_DMA.name, errno.EEXIST,
              "the IOVA range overlaps an existing mapping: unmap it first or pick another IOVA")
register_hint(_MAP_DMA.name, errno.EINVAL,
              "size zero, not aligned to the IOMMU page size, outside the usable IOVA ranges, "
              "or the container has no IOMMU set yet")
register_hint(_MAP_DMA.name, errno.EFAULT, "the user address range is not mapped in this process")
register_hint(_UNMAP_DMA.name, errno.EINVAL,
              "type1v2 only unmaps whole mappings: the range bisects one, or is unaligned/zero")

__all__ = ["Type1Iommu", "Type1Info", "MigrationCap", "CapHeader", "ShortUnmapError", "U64_MAX",
           # defined in pyvfio.core, re-exported where they were public before
           "DmaFlags", "DmaMapping", "IovaRange", "MappingTable"]
