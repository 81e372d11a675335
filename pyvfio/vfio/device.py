"""A VFIO device file: info, regions, region I/O and mmap, interrupts, reset, features.

A :class:`Device` owns the fd that ``VFIO_GROUP_GET_DEVICE_FD`` returned (``Group.open_device``
builds it). Everything goes through the seam, so the same code drives the real kernel and the
mock kernel.

Regions are addressed the vfio-pci way: region ``index`` lives at file offset ``info.offset``
(``index << 40`` for vfio-pci), so ``read``/``write`` are pread/pwrite at that offset plus the
offset inside the region, and ``mmap`` maps a page-aligned part of a region flagged
``VFIO_REGION_INFO_FLAG_MMAP`` (inside one sparse area when the region lists them).

Close order: mappings are unmapped, interrupt eventfds the device created are closed, then the
device fd. The group closes its devices before it detaches, or the kernel answers EBUSY.

Example (runs on the mock)::

    >>> from pyvfio.testing import standalone_device
    >>> dev = standalone_device("edu")
    >>> hex(dev.read_u32(0, 0x00))
    '0x10000ed'
    >>> dev.close()
"""

from __future__ import annotations

import errno
import mmap as _mmap
import sys
import weakref
from typing import Any, Iterable, Literal, Sequence

from .. import ioctls as I
from ..errors import (
    AlignmentError,
    ArgumentError,
    NotFoundError,
    PyvfioError,
    RangeError,
    StateError,
    UnsupportedError,
    register_hint,
)
from ..seam import Backend, get_backend
from ..core.fd import Closeable, FdObject
from ..eventfd import EventFd
from ..uapi import ffi
from ..uapi.args import check_int, new, u32, u64
from ..uapi.names import DEVICE_FEATURES, IRQ_INDEXES, REGION_INDEXES
from .caps import InfoCapability, get_info
from .device_info import (DeviceFeature, DeviceFlags, DeviceInfo, HotResetDevice, HotResetInfo,
                          IrqFlags, IrqInfo, IrqSetFlags, PciIrq, PciRegion, RegionFlags, RegionInfo,
                          SparseArea)
from .pci import PCI_BASE_ADDRESS_0, PCI_COMMAND, PciCommand, PciConfig

CONFIG_INDEX = I.VFIO_PCI_CONFIG_REGION_INDEX

PAGE_SIZE = _mmap.PAGESIZE
#: vfio-pci places region ``index`` at file offset ``index << VFIO_PCI_OFFSET_SHIFT``.
VFIO_PCI_OFFSET_SHIFT = 40


#: Kernel structs are in CPU byte order.
_LE = sys.byteorder == "little"


# ---------------------------------------------------------------------------------------------
# mappings
# ---------------------------------------------------------------------------------------------


class RegionMapping(Closeable):
    """A mmap of part of a region. ``addr``/``size``; ``offset`` is where it starts in the region.

    Loads and stores through :meth:`read32` and friends are single accesses of that width (what
    MMIO registers need); :attr:`buffer` is a writable memoryview over the whole mapping.
    ``close()`` (idempotent) unmaps; the device unmaps what is left when it closes.

    Safety: the memory is the device's. After ``close()`` the address is invalid; memoryviews
    taken from :attr:`buffer` must not be used after that.

    Threads: loads and stores may run from any thread; ``close()`` must not race with them.
    """

    def __init__(self, device: "Device", index: int, offset: int, size: int, addr: int, prot: int) -> None:
        self.device = device
        self.index = index
        self.offset = offset
        self.size = size
        self.addr = addr
        self.prot = prot
        self._closed = False
        self._finalizer = weakref.finalize(self, _munmap_quietly, device.backend, addr, size)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        try:
            self.device.backend.munmap(self.addr, self.size)
        finally:
            self.device._mappings.discard(self)


    def __repr__(self) -> str:
        state = "closed" if self._closed else f"addr={self.addr:#x}"
        return f"<RegionMapping region={self.index} offset={self.offset:#x} size={self.size:#x} {state}>"

    def _check(self, off: int, size: int) -> None:
        if self._closed:
            raise StateError("mapping is closed")
        if off < 0 or off + size > self.size:
            raise RangeError(f"access [{off:#x}, {off + size:#x}) outside the {self.size:#x}-byte mapping")
        if off % size and size in (2, 4, 8):
            raise AlignmentError(f"{size}-byte access at {off:#x} is not naturally aligned")

    @property
    def buffer(self) -> memoryview:
        if self._closed:
            raise StateError("mapping is closed")
        return memoryview(ffi.buffer(ffi.cast("char *", self.addr), self.size))  # type: ignore[arg-type]

    def read(self, off: int, size: int) -> bytes:
        """Copy ``size`` bytes at ``off`` (byte-wise memmove: for memory-like BAR ranges)."""
        if self._closed:
            raise StateError("mapping is closed")
        if off < 0 or size < 0 or off + size > self.size:
            raise RangeError(f"read [{off:#x}, {off + size:#x}) outside the {self.size:#x}-byte mapping")
        return bytes(ffi.buffer(ffi.cast("char *", self.addr + off), size))

    def write(self, off: int, data: bytes) -> None:
        """Copy ``data`` to ``off`` (memmove)."""
        if self._closed:
            raise StateError("mapping is closed")
        if off < 0 or off + len(data) > self.size:
            raise RangeError(f"write [{off:#x}, {off + len(data):#x}) outside the {self.size:#x}-byte mapping")
        ffi.memmove(ffi.cast("char *", self.addr + off), data, len(data))

    def _load(self, ctype: str, off: int, size: int) -> int:
        self._check(off, size)
        return int(ffi.cast(ctype + " *", self.addr + off)[0])

    def _store(self, ctype: str, off: int, size: int, value: int) -> None:
        self._check(off, size)
        if not 0 <= value < (1 << (8 * size)):
            raise ArgumentError(f"value {value:#x} does not fit in {size} bytes")
        ffi.cast(ctype + " *", self.addr + off)[0] = value

    def read8(self, off: int) -> int:
        return self._load("uint8_t", off, 1)

    def read16(self, off: int) -> int:
        return self._load("uint16_t", off, 2)

    def read32(self, off: int) -> int:
        """One 32-bit load at ``off`` in CPU byte order."""
        return self._load("uint32_t", off, 4)

    def read64(self, off: int) -> int:
        return self._load("uint64_t", off, 8)

    def write8(self, off: int, value: int) -> None:
        self._store("uint8_t", off, 1, value)

    def write16(self, off: int, value: int) -> None:
        self._store("uint16_t", off, 2, value)

    def write32(self, off: int, value: int) -> None:
        """One 32-bit store at ``off`` in CPU byte order."""
        self._store("uint32_t", off, 4, value)

    def write64(self, off: int, value: int) -> None:
        self._store("uint64_t", off, 8, value)


def _munmap_quietly(backend: Backend, addr: int, size: int) -> None:
    try:
        backend.munmap(addr, size)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# the device
# ---------------------------------------------------------------------------------------------

register_hint(I.VFIO_DEVICE_RESET.name, errno.EINVAL,
              "the device reports no reset method (no FLR, PM reset or slot/bus reset); "
              "check Device.info.reset_supported first")
register_hint(I.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO.name, errno.ENODEV,
              "neither a slot nor a bus reset is possible for this device (on a root bus?)")
register_hint(I.VFIO_DEVICE_SET_IRQS.name, errno.EINVAL,
              "another interrupt type is enabled (disable it first), the index/start/count is "
              "outside what GET_IRQ_INFO reports, or an fd is not an eventfd")


class Device(FdObject):
    """A VFIO device fd and what the kernel offers through it.

    Built by ``Group.open_device(bdf)``: ``Device(fd, group=group, name=bdf, backend=backend)``.
    The object owns ``fd`` and closes it once (``path`` is ``name``). Mappings and the eventfds
    the device created for interrupts are children, released first.

    Threads: info queries, region ``read``/``write`` (pread/pwrite at an offset) and
    ``set_irqs`` may run concurrently; each packs its own argument. ``region_info`` fills a
    per-index cache (a race stores the same answer twice). ``mmap``, ``enable_irq`` /
    ``disable_irq`` (which own eventfds) and ``close`` change the children sets without a lock:
    do not run them concurrently with each other or with accesses through what they release.
    """

    def __init__(self, fd: int, *, group: Any = None, name: str | None = None,
                 backend: "Backend | str | None" = None) -> None:
        self.group = group
        self.name = name or f"fd{fd}"
        self._adopt_fd(get_backend(backend), fd, self.name)
        self._mappings: set[RegionMapping] = set()
        self._irq_eventfds: dict[int, list[EventFd]] = {}
        self._info: DeviceInfo | None = None
        self._regions: dict[int, RegionInfo] = {}
        self._config: PciConfig | None = None
        self._decoding: set[int] = set()  # BAR indexes whose decode bit was seen on

    # -- ownership ---------------------------------------------------------------------------
    def close(self) -> None:
        """Unmap every mapping, close the device fd, then the eventfds it created. Idempotent."""
        if self.closed:
            return
        errors: list[BaseException] = []
        for m in list(self._mappings):
            try:
                m.close()
            except OSError as e:  # keep going: the fd must still be closed
                errors.append(e)
        try:
            self._close_fd()
        except OSError as e:
            errors.append(e)
        for efds in self._irq_eventfds.values():
            for efd in efds:
                efd.close()
        self._irq_eventfds.clear()
        forget = getattr(self.group, "_device_closed", None)
        if callable(forget):
            forget(self)
        if errors:
            raise errors[0]

    def __repr__(self) -> str:
        return f"<Device {self.name} fd={None if self.closed else self._fd}>"

    @property
    def mappings(self) -> tuple[RegionMapping, ...]:
        return tuple(self._mappings)


    # -- info --------------------------------------------------------------------------------
    @property
    def info(self) -> DeviceInfo:
        """The device info (fetched once, see :meth:`get_info`)."""
        if self._info is None:
            self._info = self.get_info()
        return self._info

    def get_info(self) -> DeviceInfo:
        """VFIO_DEVICE_GET_INFO, capability chain included.

        Calls again with the size the kernel asks for when the chain does not fit.
        Returns :class:`DeviceInfo`. EINVAL: argsz too small (never, pyvfio sets it).
        """
        _raw, info, caps = get_info(lambda a: self._ioctl(I.VFIO_DEVICE_GET_INFO, a),
                                    "struct vfio_device_info", I.VFIO_DEVICE_FLAGS_CAPS,
                                    op=I.VFIO_DEVICE_GET_INFO.name, path=self.name)
        return DeviceInfo(DeviceFlags(info.flags), info.num_regions, info.num_irqs, caps)

    # -- regions -----------------------------------------------------------------------------
    def region_info(self, index: int | str, *, refresh: bool = False) -> RegionInfo:
        """VFIO_DEVICE_GET_REGION_INFO for ``index``, capability chain parsed (cached).

        ``index`` is a number or a vfio-pci region name in any case ("BAR0", "config",
        "VFIO_PCI_CONFIG_REGION_INDEX"), here and in every method taking a region index.
        EINVAL: no such region (vfio-pci: VGA on a non-VGA device, index past num_regions).
        """
        index = u32(REGION_INDEXES.resolve(index), "region index")
        if not refresh and index in self._regions:
            return self._regions[index]
        op = I.VFIO_DEVICE_GET_REGION_INFO.name

        def fill(ri: Any) -> None:
            ri.index = index

        _raw, ri, caps = get_info(lambda a: self._ioctl(I.VFIO_DEVICE_GET_REGION_INFO, a), "struct vfio_region_info",
                                  I.VFIO_REGION_INFO_FLAG_CAPS, op=op, path=self.name, fill=fill)
        info = _region_from(index, int(ri.flags), int(ri.size), int(ri.offset), caps)
        self._regions[index] = info
        return info

    def regions(self) -> list[RegionInfo]:
        """Every region the device answers for (vfio-pci's VGA index gives EINVAL unless VGA)."""
        out = []
        for i in range(self.info.num_regions):
            try:
                out.append(self.region_info(i))
            except PyvfioError as e:
                if e.errno != errno.EINVAL:
                    raise
        return out

    def _region_access(self, index: int | str, offset: int, size: int, write: bool) -> RegionInfo:
        offset, size = u64(offset, "region offset"), u64(size, "access size")
        r = self.region_info(index)
        if offset + size > r.size:
            raise RangeError(f"[{offset:#x}, {offset + size:#x}) is outside region {r.name} "
                             f"({r.size:#x} bytes)")
        if write and not r.writable:
            raise ArgumentError(f"region {r.name} is not writable (flags {r.flags!r})")
        if not write and not r.readable:
            raise ArgumentError(f"region {r.name} is not readable (flags {r.flags!r})")
        if r.index <= I.VFIO_PCI_BAR5_REGION_INDEX and r.index not in self._decoding and self.info.is_pci:
            self._check_decoding(r)
        return r

    def _check_decoding(self, r: RegionInfo) -> None:
        """StateError before a BAR access while the command register has that BAR's decoding
        off (vfio-pci would answer EIO). Remembered per BAR until the command register is
        written through this object or the device is reset."""
        bar = int.from_bytes(self.read(CONFIG_INDEX, PCI_BASE_ADDRESS_0 + 4 * r.index, 4), "little")
        io = bool(bar & 1)
        cmd = int.from_bytes(self.read(CONFIG_INDEX, PCI_COMMAND, 2), "little")
        bit = PciCommand.IO if io else PciCommand.MEMORY
        if not cmd & bit:
            kind = "I/O" if io else "memory"
            raise StateError(
                f"{self.name}: {r.name} is not decoded: {kind} space is off in the command "
                f"register ({PciCommand(cmd)!r}); vfio-pci would answer EIO",
                hint=f"set PCI_COMMAND_{'IO' if io else 'MEMORY'} first: "
                     f"device.config.update_command(set=PciCommand.{bit.name})")
        self._decoding.add(r.index)

    def read(self, index: int | str, offset: int, size: int) -> bytes:
        """pread ``size`` bytes at ``offset`` inside region ``index``.

        vfio-pci splits the access into naturally aligned 8/4/2/1-byte device accesses.
        Errors: RangeError before the syscall if outside the region; StateError (with a hint)
        before the first access to a BAR whose decoding is off in the command register (the
        kernel's EIO); EFAULT/EINVAL from the kernel otherwise.
        """
        r = self._region_access(index, offset, size, write=False)
        data = self.backend.pread(self.fileno(), size, r.offset + offset)
        if len(data) != size:
            raise PyvfioError(errno.EIO, op="pread", path=self.name,
                              hint=f"short read from region {r.name}: {len(data)} of {size} bytes")
        return data

    def write(self, index: int | str, offset: int, data: bytes) -> None:
        """pwrite ``data`` (bytes-like) at ``offset`` inside region ``index`` (errors as
        :meth:`read`; ArgumentError for data that is not bytes-like, e.g. an int, which
        ``bytes()`` would turn into that many zero bytes)."""
        if isinstance(data, (int, str)) or data is None:
            raise ArgumentError(f"region data must be bytes-like, not {type(data).__name__}")
        try:
            data = bytes(memoryview(data))
        except TypeError:
            raise ArgumentError(f"region data must be bytes-like, not {type(data).__name__}") from None
        r = self._region_access(index, offset, len(data), write=True)
        if r.index == CONFIG_INDEX and offset < PCI_COMMAND + 2 and offset + len(data) > PCI_COMMAND:
            self._decoding.clear()  # the command register changes: check decoding again
        n = self.backend.pwrite(self.fileno(), data, r.offset + offset)
        if n != len(data):
            raise PyvfioError(errno.EIO, op="pwrite", path=self.name,
                              hint=f"short write to region {r.name}: {n} of {len(data)} bytes")

    def read_uint(self, index: int | str, offset: int, size: int, byteorder: str = "little") -> int:
        """One ``size``-byte (1/2/4/8) access through pread, decoded with ``byteorder``.

        PCI devices are little-endian; some emulated devices on big-endian targets are not
        (QEMU's edu on POWER), hence the option.
        """
        if size not in (1, 2, 4, 8):
            raise ArgumentError(f"access size {size} must be 1, 2, 4 or 8")
        if offset % size:
            raise AlignmentError(f"{size}-byte access at {offset:#x} is not naturally aligned")
        return int.from_bytes(self.read(index, offset, size), byteorder)  # type: ignore[arg-type]

    def write_uint(self, index: int | str, offset: int, size: int, value: int, byteorder: str = "little") -> None:
        """One ``size``-byte (1/2/4/8) store through pwrite, encoded with ``byteorder``."""
        if size not in (1, 2, 4, 8):
            raise ArgumentError(f"access size {size} must be 1, 2, 4 or 8")
        if offset % size:
            raise AlignmentError(f"{size}-byte access at {offset:#x} is not naturally aligned")
        if not 0 <= value < (1 << (8 * size)):
            raise ArgumentError(f"value {value:#x} does not fit in {size} bytes")
        self.write(index, offset, value.to_bytes(size, byteorder))  # type: ignore[arg-type]

    def read_u32(self, index: int | str, offset: int, byteorder: str = "little") -> int:
        return self.read_uint(index, offset, 4, byteorder)

    def write_u32(self, index: int | str, offset: int, value: int, byteorder: str = "little") -> None:
        self.write_uint(index, offset, 4, value, byteorder)

    def mmap(self, index: int | str, offset: int = 0, size: int | None = None, *,
             prot: int | None = None) -> RegionMapping:
        """mmap ``size`` bytes (default: to the end of the area) of region ``index`` from ``offset``.

        The range must be page-aligned and inside one mappable area (the whole region, or one
        sparse area). ``prot`` defaults to read (+write when the region is writable).
        Returns a :class:`RegionMapping` the device tracks and unmaps on close.
        Errors: ArgumentError/AlignmentError/RangeError before the syscall; EINVAL from the
        kernel for a non-mappable range.

        Safety: stores go straight to the device.
        """
        r = self.region_info(index)
        if not r.mappable:
            raise ArgumentError(f"region {r.name} cannot be mmapped (flags {r.flags!r}, size {r.size:#x})")
        if offset < 0 or offset % PAGE_SIZE:
            raise AlignmentError(f"mmap offset {offset:#x} must be a multiple of the page size {PAGE_SIZE:#x}")
        area = next((a for a in r.mmap_areas() if a.offset <= offset < a.end), None)
        if area is None:
            raise RangeError(f"offset {offset:#x} is in no mappable area of {r.name}: "
                             + ", ".join(f"[{a.offset:#x}, {a.end:#x})" for a in r.mmap_areas()))
        if size is None:
            size = area.end - offset
        if size <= 0 or offset + size > area.end:
            raise RangeError(f"[{offset:#x}, {offset + size:#x}) is not inside the mappable area "
                             f"[{area.offset:#x}, {area.end:#x}) of {r.name}")
        length = -(-size // PAGE_SIZE) * PAGE_SIZE
        if prot is None:
            prot = _mmap.PROT_READ | (_mmap.PROT_WRITE if r.writable else 0)
        addr = self.backend.mmap(length, prot, _mmap.MAP_SHARED, self.fileno(), r.offset + offset)
        m = RegionMapping(self, r.index, offset, length, addr, prot)
        self._mappings.add(m)
        return m

    def mmap_areas(self, index: int | str) -> list[RegionMapping]:
        """Map every mappable area of region ``index`` (the sparse areas, or the whole region).

        On failure, the areas already mapped are unmapped again.
        """
        r = self.region_info(index)
        out: list[RegionMapping] = []
        try:
            for a in r.mmap_areas():
                out.append(self.mmap(index, a.offset, a.size))
        except BaseException:
            for m in out:
                m.close()
            raise
        return out

    # -- PCI config space --------------------------------------------------------------------
    @property
    def config(self) -> PciConfig:
        """Config-space helpers over the vfio-pci CONFIG region."""
        if self._config is None:

            self._config = PciConfig(self)
        return self._config

    # -- interrupts --------------------------------------------------------------------------
    def irq_info(self, index: int | str) -> IrqInfo:
        """VFIO_DEVICE_GET_IRQ_INFO for ``index``. EINVAL: no such interrupt (ERR on non-PCIe).

        ``index`` is a number or a vfio-pci interrupt name in any case ("MSI", "msix", "INTx",
        "VFIO_PCI_MSI_IRQ_INDEX"), here and in every method taking an interrupt index.
        """
        index = u32(IRQ_INDEXES.resolve(index), "irq index")
        ii = new("struct vfio_irq_info", argsz=ffi.sizeof("struct vfio_irq_info"), index=index)
        self._ioctl(I.VFIO_DEVICE_GET_IRQ_INFO, ii)
        return IrqInfo(index, IrqFlags(ii.flags), int(ii.count))

    def irqs(self) -> list[IrqInfo]:
        """Every interrupt index the device answers for."""
        out = []
        for i in range(self.info.num_irqs):
            try:
                out.append(self.irq_info(i))
            except PyvfioError as e:
                if e.errno != errno.EINVAL:
                    raise
        return out

    def set_irqs(self, index: int | str, flags: int, start: int = 0, count: int = 0,
                 data: "Sequence[int] | None" = None) -> None:
        """VFIO_DEVICE_SET_IRQS as the kernel sees it.

        ``flags``: one ``DATA_*`` and one ``ACTION_*`` of :class:`IrqSetFlags`. ``data``: ``count``
        eventfd numbers (-1 for none) with DATA_EVENTFD, ``count`` booleans with DATA_BOOL.
        Errors: ArgumentError for malformed flags/data; EINVAL (another type enabled, range
        outside the count, not an eventfd); ENOTTY for actions the index lacks (MSI mask).
        """
        index, flags = u32(IRQ_INDEXES.resolve(index), "irq index"), u32(flags, "SET_IRQS flags")
        start, count = u32(start, "irq start"), u32(count, "irq count")
        dtype = flags & I.VFIO_IRQ_SET_DATA_TYPE_MASK
        action = flags & I.VFIO_IRQ_SET_ACTION_TYPE_MASK
        if bin(dtype).count("1") != 1 or bin(action).count("1") != 1 or flags & ~(
                I.VFIO_IRQ_SET_DATA_TYPE_MASK | I.VFIO_IRQ_SET_ACTION_TYPE_MASK):
            raise ArgumentError(f"SET_IRQS flags {flags:#x} need exactly one DATA_* and one ACTION_*")
        payload = b""
        if dtype == I.VFIO_IRQ_SET_DATA_EVENTFD:
            if data is None or len(data) != count:
                raise ArgumentError(f"DATA_EVENTFD needs {count} fds, got {data!r}")
            payload = b"".join(check_int(fd, "eventfd", -1, (1 << 31) - 1).to_bytes(
                4, "little" if _LE else "big", signed=True) for fd in data)
        elif dtype == I.VFIO_IRQ_SET_DATA_BOOL:
            if data is None or len(data) != count:
                raise ArgumentError(f"DATA_BOOL needs {count} values, got {data!r}")
            payload = bytes(1 if v else 0 for v in data)
        elif data:
            raise ArgumentError("DATA_NONE takes no data")
        size = ffi.sizeof("struct vfio_irq_set") + len(payload)
        raw = ffi.new("char[]", size)
        s = ffi.cast("struct vfio_irq_set *", raw)
        s.argsz = size
        s.flags = flags
        s.index = index
        s.start = start
        s.count = count
        if payload:
            ffi.memmove(s.data, payload, len(payload))
        self._ioctl(I.VFIO_DEVICE_SET_IRQS, s)

    def enable_irq(self, index: int | str, eventfds: "Iterable[EventFd | int | None] | None" = None, *,
                   count: int | None = None, start: int = 0) -> list[EventFd]:
        """Attach eventfds to vectors ``start..`` of ``index`` (enabling INTx/MSI/MSI-X).

        With ``eventfds`` None, ``count`` (default: all vectors of the index, 1 for INTx)
        new :class:`EventFd` objects are created; the device closes them on
        :meth:`disable_irq` and :meth:`close`. Returns the EventFds registered by this call
        (created or passed). ``None`` entries leave a vector without an eventfd.
        Errors: see :meth:`set_irqs`; created eventfds are closed again if the kernel refuses.
        """
        index = IRQ_INDEXES.resolve(index)
        created: list[EventFd] = []
        fds: list[int] = []
        if eventfds is None:
            n = count if count is not None else self.irq_info(index).count - start
            if n <= 0:
                raise ArgumentError(f"irq index {index} has no vector to enable (count {n})")
            created = [EventFd(backend=self.backend) for _ in range(n)]
            fds = [e.fileno() for e in created]
            given = list(created)
        else:
            given = []
            for e in eventfds:
                if e is None:
                    fds.append(-1)
                elif isinstance(e, EventFd):
                    fds.append(e.fileno())
                    given.append(e)
                else:
                    fds.append(int(e))
        try:
            self.set_irqs(index, I.VFIO_IRQ_SET_DATA_EVENTFD | I.VFIO_IRQ_SET_ACTION_TRIGGER,
                          start, len(fds), fds)
        except BaseException:
            for e in created:
                e.close()
            raise
        if created:
            self._irq_eventfds.setdefault(index, []).extend(created)
        return given

    def disable_irq(self, index: int | str) -> None:
        """Disable interrupt type ``index`` (DATA_NONE|ACTION_TRIGGER, count 0) and close the
        eventfds :meth:`enable_irq` created for it."""
        index = IRQ_INDEXES.resolve(index)
        self.set_irqs(index, I.VFIO_IRQ_SET_DATA_NONE | I.VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0)
        for e in self._irq_eventfds.pop(index, []):
            e.close()

    def mask_irq(self, index: int | str, start: int = 0, count: int = 1) -> None:
        """ACTION_MASK (vfio-pci: INTx only; MSI/MSI-X answer ENOTTY)."""
        self.set_irqs(index, I.VFIO_IRQ_SET_DATA_NONE | I.VFIO_IRQ_SET_ACTION_MASK, start, count)

    def unmask_irq(self, index: int | str, start: int = 0, count: int = 1) -> None:
        """ACTION_UNMASK: re-enable an (auto)masked INTx; a still-asserted line fires again."""
        self.set_irqs(index, I.VFIO_IRQ_SET_DATA_NONE | I.VFIO_IRQ_SET_ACTION_UNMASK, start, count)

    def trigger_irq(self, index: int | str, start: int = 0, count: int = 1,
                    values: "Sequence[bool] | None" = None) -> None:
        """ACTION_TRIGGER without eventfds: the kernel signals the registered eventfds (loopback).

        With ``values``, only vectors whose value is true fire (DATA_BOOL).
        """
        if values is None:
            self.set_irqs(index, I.VFIO_IRQ_SET_DATA_NONE | I.VFIO_IRQ_SET_ACTION_TRIGGER, start, count)
        else:
            self.set_irqs(index, I.VFIO_IRQ_SET_DATA_BOOL | I.VFIO_IRQ_SET_ACTION_TRIGGER,
                          start, len(values), list(values))

    def irq_eventfds(self, index: int | str) -> list[EventFd]:
        """The eventfds :meth:`enable_irq` created for ``index`` (empty if none)."""
        return list(self._irq_eventfds.get(IRQ_INDEXES.resolve(index), []))

    # -- reset -------------------------------------------------------------------------------
    def reset(self) -> None:
        """VFIO_DEVICE_RESET (function-level: FLR, PM or slot/bus reset, as the kernel chooses).

        Raises UnsupportedError (EOPNOTSUPP) without a syscall when the device info lacks
        VFIO_DEVICE_FLAGS_RESET (the kernel would answer EINVAL).
        """
        if not self.info.reset_supported:
            raise UnsupportedError(errno.EOPNOTSUPP, op=I.VFIO_DEVICE_RESET.name, path=self.name,
                                   hint="the device reports no reset method (VFIO_DEVICE_FLAGS_RESET "
                                        "is clear: no FLR, PM reset or slot/bus reset)")
        self._decoding.clear()  # a reset clears the command register
        self._ioctl(I.VFIO_DEVICE_RESET, 0)

    def hot_reset_info(self) -> HotResetInfo:
        """VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: the devices a slot/bus reset would affect.

        Calls again with room for the count the kernel reported (ENOSPC). Raises
        UnsupportedError (ENODEV) when neither slot nor bus reset is possible.
        """
        hdr = ffi.sizeof("struct vfio_pci_hot_reset_info")
        dep = ffi.sizeof("struct vfio_pci_dependent_device")
        count = 0
        for _ in range(4):
            size = hdr + count * dep
            raw = ffi.new("char[]", size)
            h = ffi.cast("struct vfio_pci_hot_reset_info *", raw)
            h.argsz = size
            try:
                self._ioctl(I.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, h)
            except NotFoundError as e:
                raise UnsupportedError(e.errno or errno.ENODEV, op=e.op, path=e.path, hint=e.hint) from None
            except PyvfioError as e:
                if e.errno == errno.ENOSPC and h.count > count:
                    count = int(h.count)
                    continue
                raise
            devs = tuple(HotResetDevice(int(d.group_id), int(d.segment), int(d.bus), int(d.devfn))
                         for d in (h.devices[i] for i in range(h.count)))
            return HotResetInfo(int(h.flags), devs)
        raise PyvfioError(errno.EPROTO, op=I.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO.name, hint="count kept growing")

    # -- features ----------------------------------------------------------------------------
    def probe_feature(self, feature: int | str, *, get: bool = False, set: bool = False) -> bool:
        """VFIO_DEVICE_FEATURE with PROBE: does the device support ``feature`` for GET and/or SET?

        ``feature``: a number or a name in any case ("BUS_MASTER", "dma_logging_start",
        "VFIO_DEVICE_FEATURE_MIGRATION"). Returns False when the kernel answers ENOTTY (unknown to this device) or EINVAL
        (known, but not for the requested operations); True on success.
        """
        feature = DEVICE_FEATURES.resolve(feature)
        if not 0 <= feature <= I.VFIO_DEVICE_FEATURE_MASK:
            raise ArgumentError(f"feature {feature} must be in [0, {I.VFIO_DEVICE_FEATURE_MASK:#x}]")
        f = ffi.new("struct vfio_device_feature *")
        f.argsz = ffi.sizeof("struct vfio_device_feature")
        f.flags = (feature | I.VFIO_DEVICE_FEATURE_PROBE
                   | (I.VFIO_DEVICE_FEATURE_GET if get else 0) | (I.VFIO_DEVICE_FEATURE_SET if set else 0))
        try:
            self._ioctl(I.VFIO_DEVICE_FEATURE, f)
        except PyvfioError as e:
            if e.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                return False
            raise
        return True

    def features(self) -> dict[str, tuple[bool, bool]]:
        """Every known feature -> (GET supported, SET supported), by probing."""
        return {f.name: (self.probe_feature(f, get=True), self.probe_feature(f, set=True))
                for f in DeviceFeature}


def _region_from(index: int, flags: int, size: int, offset: int,
                 caps: tuple[InfoCapability, ...]) -> RegionInfo:
    sparse: tuple[SparseArea, ...] | None = None
    msix = False
    rtype = rsub = None
    order: Literal["little", "big"] = "little" if _LE else "big"
    for c in caps:
        if c.id == I.VFIO_REGION_INFO_CAP_SPARSE_MMAP and len(c.data) >= 8:
            n = int.from_bytes(c.data[0:4], order)
            areas = []
            for k in range(n):
                o = 8 + 16 * k
                if o + 16 > len(c.data):
                    raise PyvfioError(errno.EPROTO, "sparse mmap capability truncated",
                                      op=I.VFIO_DEVICE_GET_REGION_INFO.name)
                areas.append(SparseArea(int.from_bytes(c.data[o:o + 8], order),
                                        int.from_bytes(c.data[o + 8:o + 16], order)))
            sparse = tuple(a for a in areas if a.size)
        elif c.id == I.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE:
            msix = True
        elif c.id == I.VFIO_REGION_INFO_CAP_TYPE and len(c.data) >= 8:
            rtype = int.from_bytes(c.data[0:4], order)
            rsub = int.from_bytes(c.data[4:8], order)
    return RegionInfo(index, RegionFlags(flags), size, offset, caps, sparse, msix, rtype, rsub)


__all__ = [
    "Device", "DeviceInfo", "DeviceFlags", "RegionInfo", "RegionFlags", "RegionMapping", "SparseArea",
    "IrqInfo", "IrqFlags", "IrqSetFlags", "PciRegion", "PciIrq", "DeviceFeature", "HotResetDevice",
    "HotResetInfo", "PAGE_SIZE", "VFIO_PCI_OFFSET_SHIFT",
]
