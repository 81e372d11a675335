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

import enum
import errno
import fcntl
import os
import resource
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

from .. import ioctls
from ..errors import (AlignmentError, ArgumentError, PyvfioError, RangeError, StateError,
                      UnsupportedError, error_from_errno, register_hint)
from ..uapi import ffi
from .caps import CapChainError, get_info
from .container import Container, IommuBase, register_iommu

U64_MAX = (1 << 64) - 1
_SZ_MAP = ffi.sizeof("struct vfio_iommu_type1_dma_map")
_SZ_UNMAP = ffi.sizeof("struct vfio_iommu_type1_dma_unmap")

_MAP_DMA = int(ioctls.VFIO_IOMMU_MAP_DMA)
_UNMAP_DMA = int(ioctls.VFIO_IOMMU_UNMAP_DMA)
# struct vfio_iommu_type1_dma_map / _dma_unmap packed by struct (checked against ffi below)
_MAP_FMT = struct.Struct("=IIQQQ")
_UNMAP_FMT = struct.Struct("=IIQQ")
assert _MAP_FMT.size == _SZ_MAP and _UNMAP_FMT.size == _SZ_UNMAP
_UNMAP_SIZE_AT = ffi.offsetof("struct vfio_iommu_type1_dma_unmap", "size")
_U64 = struct.Struct("=Q")
# hot-path callables bound once (module globals are cheaper than attribute chains)
_pack_map = _MAP_FMT.pack_into
_pack_unmap = _UNMAP_FMT.pack_into
_pack_map_new = _MAP_FMT.pack
_pack_unmap_new = _UNMAP_FMT.pack
_unpack_u64 = _U64.unpack_from
_fcntl_ioctl = fcntl.ioctl


class DmaFlags(enum.IntFlag):
    """Device-side access of a mapping (VFIO_DMA_MAP_FLAG_*)."""

    READ = ioctls.VFIO_DMA_MAP_FLAG_READ
    WRITE = ioctls.VFIO_DMA_MAP_FLAG_WRITE
    VADDR = ioctls.VFIO_DMA_MAP_FLAG_VADDR


_FLAGS = {(True, True): DmaFlags.READ | DmaFlags.WRITE, (True, False): DmaFlags.READ,
          (False, True): DmaFlags.WRITE}
_RW = _FLAGS[True, True]


class ShortUnmapError(PyvfioError):
    """VFIO_IOMMU_UNMAP_DMA removed less than the mapping's size."""


@dataclass(frozen=True)
class IovaRange:
    """A usable IOVA range, ``end`` inclusive (as the kernel reports it)."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    def contains(self, iova: int, size: int = 1) -> bool:
        return self.start <= iova and iova + size - 1 <= self.end

    def __repr__(self) -> str:
        return f"IovaRange({self.start:#x}, {self.end:#x})"


@dataclass(frozen=True)
class MigrationCap:
    """VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION: dirty-page tracking parameters."""

    flags: int
    pgsize_bitmap: int
    max_dirty_bitmap_size: int


@dataclass(frozen=True)
class CapHeader:
    id: int
    version: int
    offset: int


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


def _vmlck() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmLck:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class DmaMapping:
    """One live DMA mapping: ``iova``, ``size``, ``vaddr``, ``flags`` and the ``buffer`` it
    keeps alive. ``unmap()`` (or leaving the ``with`` block) removes it; idempotent.

    ``state`` is free for extensions (dirty tracking keeps per-mapping data there).
    """

    __slots__ = ("iommu", "iova", "size", "vaddr", "flags", "buffer", "state", "_live",
                 "_on_unmap", "__weakref__")

    def __init__(self, iommu: "Type1Iommu", iova: int, size: int, vaddr: int, flags: DmaFlags,
                 buffer: Any) -> None:
        self.iommu = iommu
        self.iova = iova
        self.size = size
        self.vaddr = vaddr
        self.flags = flags
        self.buffer = buffer
        self.state: dict[str, Any] = {}
        self._live = True
        # () until the first callback: most mappings never get one (no list per map)
        self._on_unmap: list[Any] | tuple[()] = ()

    def on_unmap(self, fn: Any) -> None:
        """Call ``fn(mapping)`` once the mapping is gone (the IOVA allocator frees its block)."""
        callbacks = self._on_unmap
        if isinstance(callbacks, list):
            callbacks.append(fn)
        else:
            self._on_unmap = [fn]

    @property
    def closed(self) -> bool:
        return not self._live

    def unmap(self) -> None:
        if self._live:
            self.iommu.unmap(self)

    close = unmap

    def __enter__(self) -> "DmaMapping":
        return self

    def __exit__(self, *exc: object) -> None:
        self.unmap()

    def __repr__(self) -> str:
        state = "live" if self._live else "unmapped"
        return f"<DmaMapping iova={self.iova:#x} size={self.size:#x} {self.flags!r} {state}>"


def _buffer_span(buffer: Any, size: int | None, offset: int) -> tuple[int, int]:
    try:
        addr, total = buffer.addr, buffer.size
    except AttributeError:
        if isinstance(buffer, int):
            if size is None:
                raise ArgumentError("mapping a raw address needs size=") from None
            return buffer + offset, size
        raise ArgumentError(f"cannot map {type(buffer).__name__}: pass a DmaBuffer (or an object "
                            "with .addr and .size) or an int address with size=") from None
    if getattr(buffer, "closed", False):
        raise StateError(f"{buffer!r} is closed")
    if offset < 0 or offset > total:
        raise RangeError(f"offset {offset:#x} outside the buffer (size {total:#x})")
    n = total - offset if size is None else size
    if n > total - offset:
        raise RangeError(f"size {n:#x} at offset {offset:#x} runs past the buffer (size {total:#x})")
    return int(addr) + offset, n


class MappingTable:
    """The pyvfio side of an IOMMU's DMA mappings (type1, sPAPR, an iommufd IOAS): the live
    :class:`DmaMapping` handles by IOVA, and how a handle is let go."""

    mappings: dict[int, DmaMapping]

    def _forget(self, mapping: DmaMapping) -> None:
        """The kernel no longer maps ``mapping``: mark it dead, drop it from :attr:`mappings`,
        unpin its buffer, run its on_unmap callbacks (once)."""
        mapping._live = False
        mappings, iova = self.mappings, mapping.iova
        if mappings.get(iova) is mapping:
            del mappings[iova]
        unpin = getattr(mapping.buffer, "_unpin", None)
        if unpin is not None:
            unpin(mapping)
        callbacks = mapping._on_unmap
        if callbacks:
            mapping._on_unmap = ()
            for fn in callbacks:
                fn(mapping)

    def find(self, iova: int) -> DmaMapping | None:
        """The pyvfio mapping containing ``iova``."""
        for m in self.mappings.values():
            if m.iova <= iova < m.iova + m.size:
                return m
        return None


@register_iommu
class Type1Iommu(MappingTable, IommuBase):
    """The type1 IOMMU of a container (VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU, nesting)."""

    TYPES = (ioctls.VFIO_TYPE1_IOMMU, ioctls.VFIO_TYPE1v2_IOMMU, ioctls.VFIO_TYPE1_NESTING_IOMMU)

    def __init__(self, container: Container, iommu_type: int) -> None:
        super().__init__(container, iommu_type)
        self.v2 = iommu_type != ioctls.VFIO_TYPE1_IOMMU
        self._info: Type1Info | None = None
        self._pgmask = 0xFFF
        self._spans: tuple[tuple[int, int], ...] = ()
        #: Live mappings made through map(), by IOVA.
        self.mappings: dict[int, DmaMapping] = {}
        # Hot path of map/unmap. On the real backend the arguments are packed with struct into
        # a fresh buffer per call (thread-safe without a lock) and go straight to fcntl.ioctl,
        # which returns the ioctl's own return value, skipping the generic seam wrapper. Other
        # backends (the mock, test proxies) decode cdata: they get a cdata view over a shared,
        # lock-guarded buffer packed the same way.
        self._arg_lock = threading.Lock()
        self._map_buf = bytearray(_SZ_MAP)
        self._unmap_buf = bytearray(_SZ_UNMAP)
        self._map_arg = ffi.cast("struct vfio_iommu_type1_dma_map *", ffi.from_buffer(self._map_buf))
        self._unmap_arg = ffi.cast("struct vfio_iommu_type1_dma_unmap *", ffi.from_buffer(self._unmap_buf))
        self._fd = container.fileno()
        self._ioctl = self.backend.ioctl
        from ..seam.real import RealBackend

        self._direct = type(self.backend) is RealBackend

    # -- info -----------------------------------------------------------------------------
    def info(self, *, refresh: bool = False) -> Type1Info:
        """VFIO_IOMMU_GET_INFO with the capability chain (re-called with the argsz the kernel
        asks for). Cached; ``refresh=True`` re-reads (DMA_AVAIL changes with every map)."""
        if self._info is not None and not refresh:
            return self._info
        op = "VFIO_IOMMU_GET_INFO"
        raw, info, caps = get_info(lambda a: self.ioctl(ioctls.VFIO_IOMMU_GET_INFO, a, op=op),
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
                                        "ranges runs past the buffer", op="VFIO_IOMMU_GET_INFO")
                ranges = [IovaRange(int(cap.iova_ranges[i].start), int(cap.iova_ranges[i].end))
                          for i in range(cap.nr_iovas)]
            elif h.id == ioctls.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
                if h.offset + ffi.sizeof("struct vfio_iommu_type1_info_dma_avail") > size:
                    raise CapChainError(errno.EPROTO, "DMA_AVAIL cap truncated", op="VFIO_IOMMU_GET_INFO")
                avail = int(ffi.cast("struct vfio_iommu_type1_info_dma_avail *", at).avail)
            elif h.id == ioctls.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION:
                if h.offset + ffi.sizeof("struct vfio_iommu_type1_info_cap_migration") > size:
                    raise CapChainError(errno.EPROTO, "MIGRATION cap truncated", op="VFIO_IOMMU_GET_INFO")
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
            if self._direct:
                # a fresh immutable argument per call: no shared buffer, so threads need no lock
                _fcntl_ioctl(self._fd, _MAP_DMA, _pack_map_new(_SZ_MAP, flags, vaddr, iova, size))
            else:
                with self._arg_lock:  # the cdata view over the shared buffer (mock/proxies)
                    _pack_map(self._map_buf, 0, _SZ_MAP, flags, vaddr, iova, size)
                    self._ioctl(self._fd, _MAP_DMA, self._map_arg, op="VFIO_IOMMU_MAP_DMA")
        except struct.error:
            raise RangeError(f"map_dma arguments out of range: vaddr={vaddr!r} iova={iova!r} "
                             f"size={size!r} flags={flags!r} (unsigned 64/32-bit)") from None
        except OSError as e:
            raise self._map_error(e, size) from None

    def _map_error(self, e: OSError, size: int) -> PyvfioError:
        err = e if isinstance(e, PyvfioError) else error_from_errno(
            e.errno or errno.EIO, op="VFIO_IOMMU_MAP_DMA", path=self.container.path)
        if err.errno in (errno.ENOMEM, errno.ENOSPC):
            err.hint = self._map_hint(err.errno, size) or err.hint
        return err

    def unmap_dma(self, iova: int, size: int, flags: int = 0) -> int:
        """VFIO_IOMMU_UNMAP_DMA as is; returns the size the kernel reports unmapped.

        v2: EINVAL when the range bisects a mapping; 0 when no mapping lies inside.
        """
        try:
            if self._direct:
                buf = bytearray(_pack_unmap_new(_SZ_UNMAP, flags, iova, size))
                _fcntl_ioctl(self._fd, _UNMAP_DMA, buf, True)
                done = _unpack_u64(buf, _UNMAP_SIZE_AT)[0]
            else:
                with self._arg_lock:
                    _pack_unmap(self._unmap_buf, 0, _SZ_UNMAP, flags, iova, size)
                    self._ioctl(self._fd, _UNMAP_DMA, self._unmap_arg, op="VFIO_IOMMU_UNMAP_DMA")
                    done = _unpack_u64(self._unmap_buf, _UNMAP_SIZE_AT)[0]
        except struct.error:
            raise RangeError(f"unmap_dma arguments out of range: iova={iova!r} size={size!r} "
                             f"flags={flags!r}") from None
        except OSError as e:
            if isinstance(e, PyvfioError):
                raise
            raise error_from_errno(e.errno or errno.EIO, op="VFIO_IOMMU_UNMAP_DMA",
                                   path=self.container.path) from None
        return done  # type: ignore[no-any-return]

    def _map_hint(self, err: int, size: int) -> str | None:
        if err == errno.ENOMEM:
            soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
            lim = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"
            locked = _vmlck()
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
        # the checks of _buffer_span/check()/map_dma, inlined for the common case (a whole
        # buffer, READ|WRITE, a valid IOVA, the real backend); anything else takes the general
        # functions, which raise the same errors in the same order
        if size is None and offset == 0 and type(buffer) is not int:
            try:
                vaddr, total = buffer.addr, buffer.size
            except AttributeError:
                vaddr, n = _buffer_span(buffer, size, offset)
            else:
                if getattr(buffer, "closed", False):
                    raise StateError(f"{buffer!r} is closed")
                if total < 0:
                    vaddr, n = _buffer_span(buffer, size, offset)  # raises its RangeError
                vaddr, n = int(vaddr) + offset, total - offset
        else:
            vaddr, n = _buffer_span(buffer, size, offset)
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
        if self._direct:
            try:
                _fcntl_ioctl(fd, _MAP_DMA, _pack_map_new(_SZ_MAP, flags, vaddr, iova, n))
            except struct.error:
                self.map_dma(vaddr, iova, n, flags)  # raises its RangeError
            except OSError as e:
                raise self._map_error(e, n) from None
        else:
            self.map_dma(vaddr, iova, n, flags)
        mapping = DmaMapping(self, iova, n, vaddr, flags, buffer)
        pin = getattr(buffer, "_pin", None)
        if pin is not None:
            try:
                pin(mapping)
            except BaseException:  # closed meanwhile: do not leave the kernel mapping behind
                self.unmap_dma(iova, n)
                raise
        self.mappings[iova] = mapping
        return mapping

    def unmap(self, mapping: DmaMapping) -> None:
        """VFIO_IOMMU_UNMAP_DMA of exactly ``mapping``; ShortUnmapError if the kernel removed
        less (the handle is released either way: the kernel no longer maps all of it)."""
        if not mapping._live:
            return
        if mapping.iommu is not self:
            raise ArgumentError(f"{mapping!r} belongs to another IOMMU")
        iova, size = mapping.iova, mapping.size
        if self._direct:  # unmap_dma's real-backend path, inlined (map() validated iova/size)
            try:
                buf = bytearray(_pack_unmap_new(_SZ_UNMAP, 0, iova, size))
                _fcntl_ioctl(self._fd, _UNMAP_DMA, buf, True)
            except struct.error:
                done = self.unmap_dma(iova, size)  # raises its RangeError
            except OSError as e:
                if isinstance(e, PyvfioError):
                    raise
                raise error_from_errno(e.errno or errno.EIO, op="VFIO_IOMMU_UNMAP_DMA",
                                       path=self.container.path) from None
            else:
                done = _unpack_u64(buf, _UNMAP_SIZE_AT)[0]
        else:
            done = self.unmap_dma(iova, size)
        self._forget(mapping)
        if done != size:
            raise ShortUnmapError(errno.EIO, f"unmapped {done:#x} of {mapping.size:#x} bytes at "
                                  f"{mapping.iova:#x}", op="VFIO_IOMMU_UNMAP_DMA", path=self.container.path,
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
                                  f"{expected:#x} mapped", op="VFIO_IOMMU_UNMAP_DMA", path=self.container.path)
        return done

    def update_vaddr(self, mapping: DmaMapping, buffer: Any, *, offset: int = 0) -> None:
        """Point ``mapping`` at new memory (same IOVA and size) without unmapping it: UNMAP_DMA
        with FLAG_VADDR, then MAP_DMA with FLAG_VADDR. Needs the VFIO_UPDATE_VADDR extension
        (UnsupportedError otherwise; 6.x kernels report 0)."""
        if self.container.check_extension(ioctls.VFIO_UPDATE_VADDR) <= 0:
            raise UnsupportedError(errno.EOPNOTSUPP, "the kernel does not offer VFIO_UPDATE_VADDR",
                                   op="VFIO_CHECK_EXTENSION", path=self.container.path,
                                   hint="unmap and map again instead")
        if not mapping._live or mapping.iommu is not self:
            raise StateError(f"{mapping!r} is not a live mapping of this IOMMU")
        vaddr, n = _buffer_span(buffer, mapping.size, offset)
        self.check(mapping.iova, n, vaddr)
        done = self.unmap_dma(mapping.iova, mapping.size, ioctls.VFIO_DMA_UNMAP_FLAG_VADDR)
        if done != mapping.size:
            raise ShortUnmapError(errno.EIO, f"vaddr invalidation covered {done:#x} of {mapping.size:#x}",
                                  op="VFIO_IOMMU_UNMAP_DMA", path=self.container.path)
        self.map_dma(vaddr, mapping.iova, mapping.size, DmaFlags.VADDR)
        unpin = getattr(mapping.buffer, "_unpin", None)
        if unpin is not None:
            unpin(mapping)
        mapping.buffer, mapping.vaddr = buffer, vaddr
        pin = getattr(buffer, "_pin", None)
        if pin is not None:
            pin(mapping)

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


register_hint("VFIO_IOMMU_MAP_DMA", errno.ENOMEM,
              "pinning the memory would exceed RLIMIT_MEMLOCK (the process lacks CAP_IPC_LOCK): "
              "raise the limit (ulimit -l / prlimit --memlock) or run with CAP_IPC_LOCK")
register_hint("VFIO_IOMMU_MAP_DMA", errno.ENOSPC,
              "vfio_iommu_type1's dma_entry_limit is reached "
              "(/sys/module/vfio_iommu_type1/parameters/dma_entry_limit)")
register_hint("VFIO_IOMMU_MAP_DMA", errno.EEXIST,
              "the IOVA range overlaps an existing mapping: unmap it first or pick another IOVA")
register_hint("VFIO_IOMMU_MAP_DMA", errno.EINVAL,
              "size zero, not aligned to the IOMMU page size, outside the usable IOVA ranges, "
              "or the container has no IOMMU set yet")
register_hint("VFIO_IOMMU_MAP_DMA", errno.EFAULT, "the user address range is not mapped in this process")
register_hint("VFIO_IOMMU_UNMAP_DMA", errno.EINVAL,
              "type1v2 only unmaps whole mappings: the range bisects one, or is unaligned/zero")
