"""A small driver for QEMU's edu device (docs/specs/edu.rst) over a VFIO :class:`Device`.

Registers of BAR0 (32-bit unless noted): 0x00 ident (0x010000ed: major 1, minor 0), 0x04
liveness (reads the inverse of what was written), 0x08 factorial, 0x20 status (bit 0 computing,
bit 7 raise an interrupt after the factorial), 0x24 interrupt status, 0x60 raise interrupt
(value ORed into the status), 0x64 acknowledge (bits cleared), 0x80/0x88 DMA source/destination
(64-bit), 0x90 count, 0x98 command (bit 0 start/busy, bit 1 direction: 1 = device to RAM,
bit 2 raise interrupt 0x100 when done). The device's DMA buffer is 4096 bytes at device address
0x40000 (not visible through BAR0). A DMA takes about 100 ms in QEMU (a timer).

Limits checked here before touching the device, because QEMU aborts on them:

* transfers of 1..4095 bytes ending strictly before the buffer end on QEMU 7.2
  (``max_transfer=4095``, the default; 4096 with newer QEMU), never 0 bytes;
* IOVAs inside the DMA mask (28 bits by default: ``-device edu,dma_mask=`` changes it),
  otherwise edu silently clamps the address.

On a big-endian QEMU target (POWER) edu's registers read byte-swapped from a little-endian
guest; ``byteorder=None`` detects that from the ident register.

Example (runs on the mock)::

    >>> from pyvfio.testing import standalone_device
    >>> dev = standalone_device("edu")
    >>> edu = EduDevice(dev)
    >>> hex(edu.ident), edu.liveness(0x12345678)
    ('0x10000ed', True)
    >>> dev.close()
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

from ..core.fd import Closeable
from ..errors import ArgumentError, PyvfioError, RangeError, StateError
from ..util.hexrepr import hex_repr
from .device import Device, PciIrq, RegionMapping

EDU_VENDOR_ID = 0x1234
EDU_DEVICE_ID = 0x11E8
EDU_IDENT = 0x010000ED
EDU_BAR = 0

REG_IDENT = 0x00
REG_LIVENESS = 0x04
REG_FACTORIAL = 0x08
REG_STATUS = 0x20
REG_IRQ_STATUS = 0x24
REG_IRQ_RAISE = 0x60
REG_IRQ_ACK = 0x64
REG_DMA_SRC = 0x80
REG_DMA_DST = 0x88
REG_DMA_COUNT = 0x90
REG_DMA_CMD = 0x98

STATUS_COMPUTING = 0x01
STATUS_IRQFACT = 0x80
DMA_CMD_START = 0x01
DMA_CMD_TO_RAM = 0x02
DMA_CMD_IRQ = 0x04
#: Interrupt status bit edu sets when a DMA with DMA_CMD_IRQ completes.
DMA_IRQ = 0x100
FACTORIAL_IRQ = 0x01

_LE = sys.byteorder == "little"
DMA_BUFFER_ADDR = 0x40000
DMA_BUFFER_SIZE = 4096
DEFAULT_DMA_MASK = (1 << 28) - 1
#: QEMU 7.2 rejects (aborts on) a transfer that ends exactly at the buffer end.
QEMU72_MAX_TRANSFER = 4095


class EduError(PyvfioError):
    """The device is not an edu, or did not behave like one (ident, liveness, DMA timeout)."""


class EduTimeoutError(EduError, TimeoutError):
    """A DMA or factorial did not finish within the timeout."""


@hex_repr('iova', 'offset', 'size')
@dataclass(frozen=True)
class DmaTransfer:
    """What :meth:`EduDevice.dma` programmed: direction, IOVA, device buffer offset, size."""

    to_ram: bool
    iova: int
    offset: int
    size: int


class EduDevice(Closeable):
    """Drive an edu behind ``device``: a :class:`Device` of vendor 1234 device 11e8, or what
    ``open_device`` returns (any object whose ``device`` attribute is such a Device).

    Register accesses are single 32-bit (or 64-bit for the DMA addresses above 4 GiB)
    pread/pwrite calls on BAR0; with ``use_mmap=True`` they are loads/stores through a BAR0
    mapping instead (real kernel only: the mock cannot trap stores to a mapping).

    Threads: one DMA at a time per device (a second ``dma`` while one is running raises);
    register reads may run from any thread.
    """

    def __init__(self, device: Any, *, byteorder: str | None = None, max_transfer: int = QEMU72_MAX_TRANSFER,
                 dma_mask: int = DEFAULT_DMA_MASK, use_mmap: bool = False, check: bool = True) -> None:
        if byteorder not in (None, "little", "big"):
            raise ArgumentError(f"byteorder {byteorder!r} must be 'little', 'big' or None (detect)")
        if not 1 <= max_transfer <= DMA_BUFFER_SIZE:
            raise ArgumentError(f"max_transfer {max_transfer} must be in [1, {DMA_BUFFER_SIZE}]")
        if dma_mask <= 0 or dma_mask & (dma_mask + 1):
            raise ArgumentError(f"dma_mask {dma_mask:#x} must be of the form 2**n - 1")
        if not isinstance(device, Device):
            inner = getattr(device, "device", None)
            if not isinstance(inner, Device):
                raise ArgumentError(f"EduDevice needs a vfio Device or an opened device holding one "
                                    f"(open_device(bdf)), not {type(device).__name__}")
            device = inner
        self.device = device
        self.max_transfer = max_transfer
        self.dma_mask = dma_mask
        self._map: RegionMapping | None = device.mmap(EDU_BAR, 0, 4096) if use_mmap else None
        try:
            self.byteorder = byteorder or self._detect_byteorder()
            if check:
                self.check_ident()
        except BaseException:
            self.close()
            raise

    # -- register access -----------------------------------------------------------------------
    def _detect_byteorder(self) -> str:
        raw = self._raw32(REG_IDENT)
        if raw == EDU_IDENT:
            return "little"
        if int.from_bytes(raw.to_bytes(4, "little"), "big") == EDU_IDENT:
            return "big"
        return "little"  # check_ident reports the mismatch

    def _raw32(self, reg: int) -> int:
        if self._map is not None:
            v = self._map.read32(reg)
            return int.from_bytes(v.to_bytes(4, "little" if _LE else "big"), "little")
        return self.device.read_uint(EDU_BAR, reg, 4, "little")

    def read32(self, reg: int) -> int:
        """Read edu register ``reg`` (one 32-bit access), in the device's byte order."""
        if self._map is not None:
            raw = self._map.read32(reg).to_bytes(4, "little" if _LE else "big")
            return int.from_bytes(raw, self.byteorder)  # type: ignore[arg-type]
        return self.device.read_uint(EDU_BAR, reg, 4, self.byteorder)

    def write32(self, reg: int, value: int) -> None:
        """Write edu register ``reg`` (one 32-bit access)."""
        if self._map is not None:
            raw = value.to_bytes(4, self.byteorder)  # type: ignore[arg-type]
            self._map.write32(reg, int.from_bytes(raw, "little" if _LE else "big"))
            return
        self.device.write_uint(EDU_BAR, reg, 4, value, self.byteorder)

    def write64(self, reg: int, value: int) -> None:
        """Write a 64-bit DMA register; one 32-bit access when the value fits (edu stores a
        32-bit write to 0x80/0x88/0x90 as the whole register)."""
        if value < (1 << 32):
            self.write32(reg, value)
        elif self._map is not None:
            raw = value.to_bytes(8, self.byteorder)  # type: ignore[arg-type]
            self._map.write64(reg, int.from_bytes(raw, "little" if _LE else "big"))
        else:
            self.device.write_uint(EDU_BAR, reg, 8, value, self.byteorder)

    # -- identity and liveness -----------------------------------------------------------------
    @property
    def ident(self) -> int:
        return self.read32(REG_IDENT)

    @property
    def version(self) -> tuple[int, int]:
        v = self.ident
        return v >> 24, (v >> 16) & 0xFF

    def check_ident(self) -> None:
        """Raise EduError unless the ident register reads 0xRRrr00ed."""
        v = self.ident
        if v & 0xFFFF != 0x00ED:
            raise EduError(5, f"ident register reads {v:#010x}, not 0xRRrr00ed", op="edu ident",
                           path=self.device.name, hint="not an edu device, or its BAR0 is not decoded")

    def liveness(self, value: int = 0x5A5AA5A5) -> bool:
        """Write ``value`` to the liveness register; True if it reads back inverted."""
        if not 0 <= value <= 0xFFFFFFFF:
            raise ArgumentError(f"liveness value {value:#x} must fit in 32 bits")
        self.write32(REG_LIVENESS, value)
        return self.read32(REG_LIVENESS) == (~value & 0xFFFFFFFF)

    def factorial(self, n: int, *, irq: bool = False, timeout: float = 5.0) -> int:
        """Compute ``n!`` (mod 2**32) on the device, polling the status register's busy bit.

        With ``irq`` edu raises interrupt 0x1 (FACTORIAL_IRQ) when done (status bit 7)."""
        if not 0 <= n <= 0xFFFFFFFF:
            raise ArgumentError(f"factorial argument {n} must fit in 32 bits")
        status = self.read32(REG_STATUS)
        want = (status | STATUS_IRQFACT) if irq else (status & ~STATUS_IRQFACT)
        if want != status:
            self.write32(REG_STATUS, want & STATUS_IRQFACT)
        self.write32(REG_FACTORIAL, n)
        self._poll(REG_STATUS, STATUS_COMPUTING, timeout, "factorial")
        return self.read32(REG_FACTORIAL)

    # -- interrupts ------------------------------------------------------------------------------
    @property
    def irq_status(self) -> int:
        return self.read32(REG_IRQ_STATUS)

    def raise_irq(self, value: int = 1) -> None:
        """Write ``value`` to the raise register: edu ORs it into the status and interrupts
        (an MSI message when MSI is enabled, else it asserts INTx until acknowledged)."""
        if not 0 < value <= 0xFFFFFFFF:
            raise ArgumentError(f"interrupt value {value:#x} must be a non-zero 32-bit value")
        self.write32(REG_IRQ_RAISE, value)

    def ack_irq(self, value: int | None = None) -> None:
        """Clear ``value``'s bits (default: all pending) from the interrupt status; INTx drops
        when none remain."""
        if value is None:
            value = self.irq_status
        if value:
            self.write32(REG_IRQ_ACK, value)

    # -- DMA -------------------------------------------------------------------------------------
    def enable_bus_master(self) -> None:
        """Set bus mastering in the command register (needed before any DMA)."""
        self.device.config.enable_bus_master()

    def check_transfer(self, iova: int, size: int, offset: int = 0) -> None:
        """Raise ArgumentError/RangeError for a transfer QEMU would abort on or clamp."""
        if not isinstance(size, int) or size <= 0:
            raise RangeError(f"edu DMA size {size!r} must be at least 1 byte (0 aborts QEMU)")
        if offset < 0 or offset + size > self.max_transfer:
            raise RangeError(f"edu DMA [{offset:#x}, {offset + size:#x}) of the device buffer exceeds "
                             f"{self.max_transfer} bytes (QEMU 7.2 aborts at the buffer end: "
                             f"max_transfer=4096 only with a newer QEMU)")
        if iova < 0 or iova + size - 1 > self.dma_mask:
            raise RangeError(f"IOVA range [{iova:#x}, {iova + size:#x}) exceeds edu's DMA mask "
                             f"{self.dma_mask:#x}: allocate IOVAs below {self.dma_mask + 1:#x}")

    def dma(self, iova: int, size: int, *, to_ram: bool, offset: int = 0, irq: bool = False,
            wait: bool = True, timeout: float = 5.0) -> DmaTransfer:
        """Program one DMA between IOVA ``iova`` and the device buffer at ``offset``.

        ``to_ram=False``: RAM -> device buffer; True: device buffer -> RAM. With ``irq`` edu
        raises interrupt 0x100 when done. With ``wait`` polls the command register until the
        busy bit clears (EduTimeoutError after ``timeout`` s).

        Refuses (StateError, before touching edu) while bus mastering is off in the PCI command
        register: the DMA would "complete" and move nothing. It does not turn bus mastering on
        behind the caller's back: call :meth:`enable_bus_master` once.

        Safety: the IOVA must be mapped (readable for to_ram=False, writable otherwise) to
        memory that stays alive until the transfer is done; an unmapped IOVA makes the IOMMU
        drop the access and log a fault.
        """
        self.check_transfer(iova, size, offset)
        if not self.device.config.bus_master:
            raise StateError(f"{self.device.name}: bus mastering is off (PCI_COMMAND_MASTER clear): "
                             "edu's DMA would finish without moving a byte",
                             hint="call edu.enable_bus_master() (or device.config.enable_bus_master()) first")
        if self.dma_busy:
            raise EduError(16, "a DMA is already in progress", op="edu dma", path=self.device.name)
        dev_addr = DMA_BUFFER_ADDR + offset
        src, dst = (dev_addr, iova) if to_ram else (iova, dev_addr)
        self.write64(REG_DMA_SRC, src)
        self.write64(REG_DMA_DST, dst)
        self.write64(REG_DMA_COUNT, size)
        self.write32(REG_DMA_CMD, DMA_CMD_START | (DMA_CMD_TO_RAM if to_ram else 0) | (DMA_CMD_IRQ if irq else 0))
        if wait:
            self.wait_dma(timeout)
        return DmaTransfer(to_ram, iova, offset, size)

    def to_device(self, iova: int, size: int, offset: int = 0, **kw: object) -> DmaTransfer:
        """DMA ``size`` bytes from RAM at ``iova`` into the device buffer at ``offset``."""
        return self.dma(iova, size, to_ram=False, offset=offset, **kw)  # type: ignore[arg-type]

    def from_device(self, iova: int, size: int, offset: int = 0, **kw: object) -> DmaTransfer:
        """DMA ``size`` bytes from the device buffer at ``offset`` to RAM at ``iova``."""
        return self.dma(iova, size, to_ram=True, offset=offset, **kw)  # type: ignore[arg-type]

    @property
    def dma_busy(self) -> bool:
        return bool(self.read32(REG_DMA_CMD) & DMA_CMD_START)

    def wait_dma(self, timeout: float = 5.0) -> None:
        """Poll the command register until the busy bit clears."""
        self._poll(REG_DMA_CMD, DMA_CMD_START, timeout, "DMA")

    def _poll(self, reg: int, bit: int, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while self.read32(reg) & bit:
            if time.monotonic() > deadline:
                raise EduTimeoutError(62, f"edu {what} still busy after {timeout} s", op=f"edu {what}",
                                      path=self.device.name)
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    def close(self) -> None:
        """Unmap the register mapping (if any); the Device stays open."""
        if self._map is not None:
            self._map.close()
            self._map = None



def is_edu(device: Device) -> bool:
    """True if the device's config space says 1234:11e8."""
    cfg = device.config
    return (cfg.vendor_id, cfg.device_id) == (EDU_VENDOR_ID, EDU_DEVICE_ID)



__all__ = ["EduDevice", "EduError", "EduTimeoutError", "DmaTransfer", "is_edu", "EDU_IDENT",
           "DMA_BUFFER_ADDR", "DMA_BUFFER_SIZE", "DMA_IRQ", "DEFAULT_DMA_MASK", "QEMU72_MAX_TRANSFER",
           "PciIrq"]
