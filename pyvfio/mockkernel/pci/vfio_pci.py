"""Simulated PCI devices and the vfio-pci device file of the mock kernel.

Follows drivers/vfio/pci/vfio_pci_core.c, vfio_pci_rdwr.c, vfio_pci_intrs.c and
vfio_pci_config.c (6.x) where user space can tell:

* ``VFIO_DEVICE_GET_INFO``: flags PCI (+RESET when the device has a reset method), 9 regions,
  5 interrupt indexes; EINVAL when argsz is below the fixed part.
* ``VFIO_DEVICE_GET_REGION_INFO``: region ``i`` at offset ``i << 40``; BARs READ|WRITE (+MMAP
  when mappable) with a MSIX_MAPPABLE capability on the MSI-X BAR, or a SPARSE_MMAP capability
  leaving out the MSI-X table when the device asks for the pre-4.16 behaviour; ROM read-only;
  CONFIG 256 or 4096 bytes; VGA gives EINVAL on a non-VGA device; capability chains grow argsz
  (flags CAPS, cap_offset 0) when they do not fit, as the kernel does.
* pread/pwrite: config accesses outside the config space give EFAULT; BAR accesses past the end
  EINVAL, straddling the end are short; memory BARs give EIO while memory decoding is off in the
  command register; the MSI-X table reads all-ones and drops writes (mmap sees the real table);
  writes to read-only config bits are dropped. BAR sizing works.
* mmap: MAP_SHARED only, BARs flagged MMAP only, inside the page-aligned BAR (EINVAL otherwise).
  BAR memory is a memfd, so mmap and pread/pwrite see the same bytes. Registers with side effects
  (edu's liveness, DMA doorbell, interrupt raise) act on pread/pwrite only: stores through a
  mapping cannot be trapped in process and just change the bytes.
* ``VFIO_DEVICE_SET_IRQS``: the validation of vfio_set_irqs_validate_and_prepare; INTx
  (automasked level interrupt, MASK/UNMASK, a still-asserted line fires again on unmask), MSI and
  MSI-X (one type at a time, EINVAL otherwise; MASK/UNMASK give ENOTTY), loopback triggers with
  DATA_NONE/DATA_BOOL, eventfds checked like eventfd_ctx_fdget (EBADF, EINVAL).
* ``VFIO_DEVICE_RESET`` (EINVAL without a reset method; config space is saved and restored around
  the device's own reset), ``VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`` (ENODEV on a root bus, ENOSPC
  with the count when the array does not fit), ``VFIO_DEVICE_FEATURE`` (PROBE; low-power entry
  and exit are SET-only, the rest ENOTTY).

Devices: :class:`Edu` (QEMU's edu: ids 1234:11e8, ident 0x010000ed, liveness inverse,
factorial, DMA engine with a 4096-byte buffer at device address 0x40000, 28-bit DMA mask,
interrupt raise/ack) and :class:`E1000e` (an e1000e-like NIC: PCIe config space with PM, MSI,
PCIe and MSI-X capabilities, AER and DSN extended capabilities, four BARs, no behaviour).
DMA goes through the VFIO group's ``dma_read``/``dma_write`` (the container's IOMMU); a refused
access is logged to ``kernel.dmesg`` by the group and does not land.
"""

from __future__ import annotations

import errno
import mmap as _mmap
import os
from typing import Any

from ... import ioctls as I
from ...uapi import ffi, lib
from . import dmalog
from ..core import KernelError, MockFile, MockKernel, handles
from .device import Bar, CMD_MEMORY, CONFIG, ERR, INTX, MSI, MSIX, NUM_IRQS, NUM_REGIONS, OFFSET_MASK, OFFSET_SHIFT, PAGE, ROM, SimPciDevice, VGA, _ENDIAN, _page_align


# ---------------------------------------------------------------------------------------------
# the vfio-pci device file
# ---------------------------------------------------------------------------------------------


def _cap_chain(caps: list[tuple[int, int, bytes]], base: int) -> bytes:
    """Serialize (id, version, payload) capabilities into a chain whose offsets start at ``base``."""
    out = bytearray()
    for k, (cid, ver, payload) in enumerate(caps):
        here = base + len(out)
        size = 8 + len(payload)
        size += -size % 8
        nxt = here + size if k + 1 < len(caps) else 0
        out += cid.to_bytes(2, _ENDIAN) + ver.to_bytes(2, _ENDIAN) + nxt.to_bytes(4, _ENDIAN)  # type: ignore[arg-type]
        out += payload + bytes(size - 8 - len(payload))
    return bytes(out)


def _u32(v: int) -> bytes:
    return v.to_bytes(4, _ENDIAN)  # type: ignore[arg-type]


def _u64(v: int) -> bytes:
    return v.to_bytes(8, _ENDIAN)  # type: ignore[arg-type]


def _eventfd_dup(fd: int) -> int:
    """eventfd_ctx_fdget: EBADF for a closed fd, EINVAL for a non-eventfd; a kernel reference."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        raise KernelError(errno.EBADF, f"vfio-pci: fd {fd} is not open") from None
    if target != "anon_inode:[eventfd]":
        raise KernelError(errno.EINVAL, f"vfio-pci: fd {fd} is not an eventfd ({target})")
    return os.dup(fd)


class VfioPciDeviceFile(MockFile):
    """The file behind a vfio-pci device fd."""

    def __init__(self, kernel: MockKernel, sim: SimPciDevice, group: Any, *, owns_device: bool = False) -> None:
        super().__init__(kernel, f"vfio-device:{sim.name}")
        self.sim = sim
        self.group = group
        self.owns_device = owns_device
        sim.enable(kernel, group)

    def release(self) -> None:
        self.sim.disable()
        if self.owns_device:  # a standalone device goes away with its only file
            self.sim.close()

    # -- info ------------------------------------------------------------------------------
    @handles("VFIO_DEVICE_GET_INFO")
    def get_info(self, arg: Any) -> int:
        info = ffi.cast("struct vfio_device_info *", arg)
        minsz = ffi.offsetof("struct vfio_device_info", "num_irqs") + 4
        if info.argsz < minsz:
            raise KernelError(errno.EINVAL, "vfio-pci: GET_INFO argsz too small")
        info.flags = I.VFIO_DEVICE_FLAGS_PCI | (I.VFIO_DEVICE_FLAGS_RESET if self.sim.reset_method else 0)
        info.num_regions = NUM_REGIONS
        info.num_irqs = NUM_IRQS
        if info.argsz >= ffi.sizeof("struct vfio_device_info"):
            info.cap_offset = 0
        return 0

    def _region(self, index: int) -> tuple[int, int, list[tuple[int, int, bytes]]]:
        """(flags, size, caps) of region ``index``; EINVAL for VGA/unknown."""
        R, W, M = I.VFIO_REGION_INFO_FLAG_READ, I.VFIO_REGION_INFO_FLAG_WRITE, I.VFIO_REGION_INFO_FLAG_MMAP
        sim = self.sim
        if index < 6:
            bar = sim.bars[index]
            if bar is None:
                return 0, 0, []
            flags = R | W | (M if bar.mmap else 0)
            caps: list[tuple[int, int, bytes]] = []
            t = sim.msix_table()
            if bar.mmap and t and t[0] == index:
                areas = sim.sparse_areas(index)
                if areas is not None:
                    payload = _u32(len(areas)) + _u32(0) + b"".join(_u64(o) + _u64(s) for o, s in areas)
                    caps.append((I.VFIO_REGION_INFO_CAP_SPARSE_MMAP, 1, payload))
                else:
                    caps.append((I.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 1, b""))
            return flags, bar.size, caps
        if index == ROM:
            return (R, len(sim.rom), []) if sim.rom else (0, 0, [])
        if index == CONFIG:
            return R | W, sim.cfg_size, []
        raise KernelError(errno.EINVAL, f"vfio-pci: no region {index} (not a VGA device)")

    @handles("VFIO_DEVICE_GET_REGION_INFO")
    def get_region_info(self, arg: Any) -> int:
        ri = ffi.cast("struct vfio_region_info *", arg)
        fixed = ffi.sizeof("struct vfio_region_info")
        if ri.argsz < fixed:
            raise KernelError(errno.EINVAL, "vfio-pci: GET_REGION_INFO argsz too small")
        if ri.index >= NUM_REGIONS:
            raise KernelError(errno.EINVAL, f"vfio-pci: region index {ri.index} out of range")
        flags, size, caps = self._region(int(ri.index))
        ri.offset = int(ri.index) << OFFSET_SHIFT
        ri.size = size
        ri.cap_offset = 0
        if caps:
            chain = _cap_chain(caps, fixed)
            flags |= I.VFIO_REGION_INFO_FLAG_CAPS
            if ri.argsz < fixed + len(chain):
                ri.argsz = fixed + len(chain)
            else:
                ffi.memmove(ffi.cast("char *", arg) + fixed, chain, len(chain))
                ri.cap_offset = fixed
        ri.flags = flags
        return 0

    @handles("VFIO_DEVICE_GET_IRQ_INFO")
    def get_irq_info(self, arg: Any) -> int:
        ii = ffi.cast("struct vfio_irq_info *", arg)
        if ii.argsz < ffi.sizeof("struct vfio_irq_info"):
            raise KernelError(errno.EINVAL, "vfio-pci: GET_IRQ_INFO argsz too small")
        index = int(ii.index)
        if index >= NUM_IRQS or (index == ERR and not self.sim.pcie):
            raise KernelError(errno.EINVAL, f"vfio-pci: no interrupt index {index}")
        flags = I.VFIO_IRQ_INFO_EVENTFD
        if index == INTX:
            flags |= I.VFIO_IRQ_INFO_MASKABLE | I.VFIO_IRQ_INFO_AUTOMASKED
        elif index != MSIX or self.sim.msix_table() is None:
            flags |= I.VFIO_IRQ_INFO_NORESIZE  # dynamic MSI-X needs an MSI-X capability
        ii.flags = flags
        ii.count = self.sim.irq_count(index)
        return 0

    # -- interrupts -------------------------------------------------------------------------
    @handles("VFIO_DEVICE_SET_IRQS")
    def set_irqs(self, arg: Any) -> int:
        hdr = ffi.cast("struct vfio_irq_set *", arg)
        minsz = ffi.sizeof("struct vfio_irq_set")
        flags, index, start, count = int(hdr.flags), int(hdr.index), int(hdr.start), int(hdr.count)
        allowed = I.VFIO_IRQ_SET_DATA_TYPE_MASK | I.VFIO_IRQ_SET_ACTION_TYPE_MASK
        if hdr.argsz < minsz or index >= NUM_IRQS or count >= 0xFFFFFFFF - start or flags & ~allowed:
            raise KernelError(errno.EINVAL, "vfio-pci: SET_IRQS header invalid")
        max_irqs = self.sim.irq_count(index)
        if (start >= max_irqs and count) or start + count > max_irqs:
            raise KernelError(errno.EINVAL, f"vfio-pci: SET_IRQS range {start}+{count} > {max_irqs}")
        dtype = flags & I.VFIO_IRQ_SET_DATA_TYPE_MASK
        size = {I.VFIO_IRQ_SET_DATA_NONE: 0, I.VFIO_IRQ_SET_DATA_BOOL: 1,
                I.VFIO_IRQ_SET_DATA_EVENTFD: 4}.get(dtype)
        if size is None:
            raise KernelError(errno.EINVAL, "vfio-pci: SET_IRQS needs exactly one DATA_ type")
        data = b""
        if size:
            if hdr.argsz - minsz < count * size:
                raise KernelError(errno.EINVAL, "vfio-pci: SET_IRQS data shorter than count")
            data = bytes(ffi.buffer(hdr.data, count * size))
        action = flags & I.VFIO_IRQ_SET_ACTION_TYPE_MASK
        if index == INTX:
            fn = {I.VFIO_IRQ_SET_ACTION_MASK: self._intx_mask, I.VFIO_IRQ_SET_ACTION_UNMASK: self._intx_unmask,
                  I.VFIO_IRQ_SET_ACTION_TRIGGER: self._intx_trigger}.get(action)
        elif index in (MSI, MSIX):
            fn = self._msi_trigger if action == I.VFIO_IRQ_SET_ACTION_TRIGGER else None
        else:  # ERR (PCIe) and REQ: trigger only; the mock never raises them
            fn = self._other_trigger if action == I.VFIO_IRQ_SET_ACTION_TRIGGER else None
        if fn is None:
            raise KernelError(errno.ENOTTY, f"vfio-pci: SET_IRQS action {action:#x} unsupported on index {index}")
        fn(index, dtype, start, count, data)
        return 0

    def _fds(self, data: bytes, count: int) -> list[int]:
        return [int.from_bytes(data[4 * i:4 * i + 4], _ENDIAN, signed=True) for i in range(count)]  # type: ignore[arg-type]

    def _intx_mask(self, index: int, dtype: int, start: int, count: int, data: bytes) -> None:
        sim = self.sim
        if sim.irq_type != INTX or start != 0 or count != 1:
            raise KernelError(errno.EINVAL, "vfio-pci: INTx mask without INTx enabled")
        if dtype == I.VFIO_IRQ_SET_DATA_EVENTFD:
            raise KernelError(errno.EINVAL, "vfio-pci: INTx mask by eventfd not implemented")
        if dtype == I.VFIO_IRQ_SET_DATA_NONE or data[0]:
            sim.intx_masked = True

    def _intx_unmask(self, index: int, dtype: int, start: int, count: int, data: bytes) -> None:
        sim = self.sim
        if sim.irq_type != INTX or start != 0 or count != 1:
            raise KernelError(errno.EINVAL, "vfio-pci: INTx unmask without INTx enabled")
        if dtype == I.VFIO_IRQ_SET_DATA_EVENTFD:
            raise KernelError(errno.EINVAL, "vfio-pci: unmask eventfds (irqfd resampling) are not simulated")
        if dtype == I.VFIO_IRQ_SET_DATA_NONE or data[0]:
            if sim.intx_masked:
                sim.intx_masked = False
                if sim.intx_level:  # still asserted: fires again, masked again
                    sim.set_intx_level(True)

    def _intx_trigger(self, index: int, dtype: int, start: int, count: int, data: bytes) -> None:
        sim = self.sim
        if sim.irq_type == INTX and count == 0 and dtype == I.VFIO_IRQ_SET_DATA_NONE:
            sim.irq_disable()
            return
        if sim.irq_type not in (INTX, None) or start != 0 or count != 1:
            raise KernelError(errno.EINVAL, "vfio-pci: INTx trigger: another type enabled or bad range")
        if dtype == I.VFIO_IRQ_SET_DATA_EVENTFD:
            fd = self._fds(data, 1)[0]
            new = _eventfd_dup(fd) if fd >= 0 else None
            if sim.irq_type == INTX:
                old = sim.triggers[0] if sim.triggers else None
                sim.triggers = [new]
                if old is not None:
                    os.close(old)
            else:
                sim.irq_type = INTX
                sim.triggers = [new]
                sim.intx_masked = False
                if sim.intx_level:
                    sim.set_intx_level(True)
            return
        if sim.irq_type != INTX:
            raise KernelError(errno.EINVAL, "vfio-pci: INTx loopback trigger without INTx enabled")
        if dtype == I.VFIO_IRQ_SET_DATA_NONE or data[0]:
            sim._signal(sim.triggers[0] if sim.triggers else None)

    def _msi_trigger(self, index: int, dtype: int, start: int, count: int, data: bytes) -> None:
        sim = self.sim
        if sim.irq_type == index and count == 0 and dtype == I.VFIO_IRQ_SET_DATA_NONE:
            sim.irq_disable()
            return
        if sim.irq_type not in (index, None):
            raise KernelError(errno.EINVAL, "vfio-pci: MSI/MSI-X trigger while another type is enabled")
        if dtype == I.VFIO_IRQ_SET_DATA_EVENTFD:
            fds = self._fds(data, count)
            news: list[int | None] = []
            try:
                for fd in fds:
                    news.append(_eventfd_dup(fd) if fd >= 0 else None)
            except KernelError:
                for n in news:
                    if n is not None:
                        os.close(n)
                raise
            if sim.irq_type != index:
                if count == 0:
                    raise KernelError(errno.EINVAL, "vfio-pci: enabling MSI needs at least one vector")
                sim.irq_type = index
                sim.triggers = [None] * (start + count)
            elif start + count > len(sim.triggers):
                if index == MSI:
                    for n in news:
                        if n is not None:
                            os.close(n)
                    raise KernelError(errno.EINVAL, "vfio-pci: MSI vectors cannot grow once enabled")
                sim.triggers += [None] * (start + count - len(sim.triggers))
            for k, n in enumerate(news):
                old = sim.triggers[start + k]
                sim.triggers[start + k] = n
                if old is not None:
                    os.close(old)
            return
        if sim.irq_type != index:
            raise KernelError(errno.EINVAL, "vfio-pci: MSI loopback trigger without MSI enabled")
        for k in range(count):
            v = start + k
            if v < len(sim.triggers) and (dtype == I.VFIO_IRQ_SET_DATA_NONE or data[k]):
                sim._signal(sim.triggers[v])

    def _other_trigger(self, index: int, dtype: int, start: int, count: int, data: bytes) -> None:
        # ERR/REQ: registering or clearing the one eventfd is accepted; nothing ever fires
        if dtype == I.VFIO_IRQ_SET_DATA_EVENTFD:
            for fd in self._fds(data, count):
                if fd >= 0:
                    os.close(_eventfd_dup(fd))

    # -- reset, hot reset, features ---------------------------------------------------------
    @handles("VFIO_DEVICE_RESET")
    def reset(self, arg: Any) -> int:
        if not self.sim.reset_method:
            raise KernelError(errno.EINVAL, f"vfio-pci {self.sim.name}: no reset method")
        self.sim.function_reset()
        return 0

    @handles("VFIO_DEVICE_GET_PCI_HOT_RESET_INFO")
    def hot_reset_info(self, arg: Any) -> int:
        h = ffi.cast("struct vfio_pci_hot_reset_info *", arg)
        hdr = ffi.sizeof("struct vfio_pci_hot_reset_info")
        if h.argsz < hdr:
            raise KernelError(errno.EINVAL, "vfio-pci: HOT_RESET_INFO argsz too small")
        h.flags = 0
        peers = self.sim.hot_reset_peers()
        if peers is None:
            raise KernelError(errno.ENODEV, f"vfio-pci {self.sim.name}: no slot or bus reset (root bus)")
        dep = ffi.sizeof("struct vfio_pci_dependent_device")
        if h.argsz < hdr + len(peers) * dep:
            h.count = len(peers)
            raise KernelError(errno.ENOSPC, "vfio-pci: HOT_RESET_INFO array too small")
        h.count = len(peers)
        for i, (g, seg, bus, devfn) in enumerate(peers):
            d = h.devices[i]
            d.group_id, d.segment, d.bus, d.devfn = g, seg, bus, devfn
        return 0

    @handles("VFIO_DEVICE_FEATURE")
    def feature(self, arg: Any) -> int:
        f = ffi.cast("struct vfio_device_feature *", arg)
        if f.argsz < ffi.sizeof("struct vfio_device_feature"):
            raise KernelError(errno.EINVAL, "vfio: FEATURE argsz too small")
        flags = int(f.flags)
        G, S, P = I.VFIO_DEVICE_FEATURE_GET, I.VFIO_DEVICE_FEATURE_SET, I.VFIO_DEVICE_FEATURE_PROBE
        if flags & ~(I.VFIO_DEVICE_FEATURE_MASK | G | S | P):
            raise KernelError(errno.EINVAL, "vfio: FEATURE unknown flags")
        if not flags & P and flags & G and flags & S:
            raise KernelError(errno.EINVAL, "vfio: FEATURE GET and SET together without PROBE")
        feat = flags & I.VFIO_DEVICE_FEATURE_MASK
        if I.VFIO_DEVICE_FEATURE_DMA_LOGGING_START <= feat <= I.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT:
            # DMA_LOGGING_START/STOP/REPORT: ENOTTY unless the device logs
            return dmalog.device_feature(self.sim, arg)
        supported = {I.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY: S,
                     I.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP: S,
                     I.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT: S}.get(feat)
        if supported is None:
            raise KernelError(errno.ENOTTY, f"vfio-pci: feature {feat} not supported")
        if flags & (G | S) & ~supported:
            raise KernelError(errno.EINVAL, f"vfio-pci: feature {feat} does not support that operation")
        if flags & P:
            return 0
        raise KernelError(errno.EINVAL, "vfio-pci mock: low-power transitions are not simulated")

    # -- region I/O -------------------------------------------------------------------------
    def _split(self, offset: int) -> tuple[int, int]:
        return offset >> OFFSET_SHIFT, offset & OFFSET_MASK

    def _bar_access(self, index: int, pos: int, count: int) -> tuple[Bar, int]:
        sim = self.sim
        if index >= NUM_REGIONS:
            raise KernelError(errno.EINVAL, f"vfio-pci: no region {index}")
        if index in (ROM, VGA) or index > CONFIG:
            raise KernelError(errno.EINVAL, f"vfio-pci: region {index} not present")
        bar = sim.bars[index]
        if bar is None:
            raise KernelError(errno.EINVAL, f"vfio-pci: BAR{index} not implemented")
        if pos >= bar.size:
            raise KernelError(errno.EINVAL, f"vfio-pci: BAR{index} offset {pos:#x} past the end")
        if not bar.io and not sim.command & CMD_MEMORY:
            raise KernelError(errno.EIO, f"vfio-pci: BAR{index} access with memory decoding disabled")
        return bar, min(count, bar.size - pos)

    def _config_range(self, pos: int, count: int) -> None:
        if pos >= self.sim.cfg_size or pos + count > self.sim.cfg_size:
            raise KernelError(errno.EFAULT, f"vfio-pci: config access {pos:#x}+{count} outside config space")

    def pread(self, size: int, offset: int) -> bytes:
        index, pos = self._split(offset)
        if index == ROM and self.sim.rom:
            if pos >= len(self.sim.rom):
                raise KernelError(errno.EINVAL, f"vfio-pci: ROM offset {pos:#x} past the end")
            return self.sim.rom[pos:pos + size]
        if index == CONFIG:
            self._config_range(pos, size)
            return self.sim.cfg_read(pos, size)
        bar, n = self._bar_access(index, pos, size)
        lo, hi = self._msix_window(index)
        out = b""
        for a, b, hidden in self._pieces(pos, pos + n, lo, hi):
            out += b"\xff" * (b - a) if hidden else self.sim.mmio_read(bar, a, b - a)
        return out

    def pwrite(self, data: bytes, offset: int) -> int:
        index, pos = self._split(offset)
        if index == CONFIG:
            self._config_range(pos, len(data))
            self.sim.cfg_write(pos, data)
            return len(data)
        bar, n = self._bar_access(index, pos, len(data))
        lo, hi = self._msix_window(index)
        for a, b, hidden in self._pieces(pos, pos + n, lo, hi):
            if not hidden:
                self.sim.mmio_write(bar, a, data[a - pos:b - pos])
        return n

    def _msix_window(self, index: int) -> tuple[int, int]:
        """vfio-pci's view of the MSI-X table through read/write: reads give all-ones and
        writes are dropped (the table is the kernel's); mmap sees the real table."""
        t = self.sim.msix_table()
        if t is None or t[0] != index:
            return 0, 0
        return t[1], t[1] + t[2]

    @staticmethod
    def _pieces(start: int, end: int, lo: int, hi: int) -> list[tuple[int, int, bool]]:
        cuts = sorted({start, end, *(c for c in (lo, hi) if start < c < end)})
        return [(a, b, lo <= a < hi) for a, b in zip(cuts, cuts[1:])]

    def mmap(self, length: int, prot: int, flags: int, offset: int) -> int:
        index, pos = self._split(offset)
        if index >= NUM_REGIONS or length <= 0:
            raise KernelError(errno.EINVAL, f"vfio-pci: mmap of region {index}")
        if not flags & _mmap.MAP_SHARED:
            raise KernelError(errno.EINVAL, "vfio-pci: mmap needs MAP_SHARED")
        if index >= ROM:
            raise KernelError(errno.EINVAL, f"vfio-pci: region {index} cannot be mmapped")
        bar = self.sim.bars[index]
        if bar is None or not bar.mmap:
            raise KernelError(errno.EINVAL, f"vfio-pci: BAR{index} is not mmap-able")
        if pos % PAGE or pos + length > _page_align(bar.size):
            raise KernelError(errno.EINVAL, f"vfio-pci: mmap [{pos:#x}, {pos + length:#x}) outside BAR{index}")
        areas = self.sim.sparse_areas(index)
        if areas is not None and not any(o <= pos and pos + length <= o + n for o, n in areas):
            raise KernelError(errno.EINVAL, f"vfio-pci: mmap [{pos:#x}, {pos + length:#x}) of BAR{index} "
                                            f"is not inside a sparse mmap area")
        p = lib.mmap(ffi.NULL, length, prot, flags, bar.fd, pos)
        addr = int(ffi.cast("uintptr_t", p))
        if addr == (1 << 64) - 1:
            raise KernelError(ffi.errno, f"vfio-pci mock: mmap of the BAR{index} memfd failed")
        return addr


def open_device_file(kernel: MockKernel, group_state: Any, sim_device: SimPciDevice, *,
                     owns_device: bool = False) -> MockFile:
    """The MockFile answering VFIO_DEVICE_* for ``sim_device`` (VFIO_GROUP_GET_DEVICE_FD).

    ``group_state`` provides ``dma_read(iova, size, device=)``/``dma_write(iova, data, device=)``
    through the container's IOMMU (raising KernelError, already logged, on a fault); None means
    no IOMMU domain (every DMA faults). ``owns_device``: releasing the file powers the simulated
    device off (its BAR memfds are closed).
    """
    return VfioPciDeviceFile(kernel, sim_device, group_state, owns_device=owns_device)


__all__ = ["VfioPciDeviceFile", "open_device_file"]
