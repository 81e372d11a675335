"""Numbers and types at the boundary (issue 21, items 3, 9, 11, 12).

Every call below gets an argument no C field can hold (negative, too wide), a float, None or an
object of the wrong type. Each must raise pyvfio's typed error (ArgumentError, RangeError where
a number is out of range) -- never a bare OverflowError, TypeError or AttributeError from cffi or
from formatting a message -- and must issue no syscall at all (FaultyBackend's log tells).
"""

from __future__ import annotations

import mmap
from typing import Any, Callable

import numpy as np
import pytest

from pyvfio.errors import ArgumentError, RangeError
from pyvfio.iommufd import IommuFd
from pyvfio.iommufd.device import cdev_path
from pyvfio.kvm import GuestMemory, Kvm
from pyvfio.services.dirty import DirtyTracker
from pyvfio.services.dma import DmaBuffer, DmaMapper
from pyvfio.testing import FaultyBackend, machine, power_backend
from pyvfio.vfio import Container, Group, open_device

PAGE = mmap.PAGESIZE
BDF = "0000:00:03.0"


class World:
    """Objects of every subsystem on one mock kernel, behind a logging FaultyBackend."""

    def __init__(self, be: Any) -> None:
        self.be = be
        self.faulty = FaultyBackend(be)
        self._close: list[Any] = []

    def keep(self, obj: Any) -> Any:
        self._close.append(obj)
        return obj

    def close(self) -> None:
        for obj in reversed(self._close):
            obj.close()

    # -- lazily made objects --------------------------------------------------------------
    def kvm(self) -> Any:
        return self.keep(Kvm(backend=self.faulty))

    def vm(self) -> Any:
        vm = self.keep(self.kvm().create_vm())
        vm.max_slots, vm.address_spaces, vm._valid_flags()  # capability answers cached up front
        return vm

    def mem(self) -> Any:
        return self.keep(GuestMemory.anonymous(4 * PAGE, backend=self.faulty))

    def slot(self) -> Any:
        vm = self.vm()
        mem = self.mem()
        return self.keep(vm.add_memslot(mem, 0x100000, 4 * PAGE))  # deleted before mem closes

    def opened(self) -> Any:
        return self.keep(open_device(BDF, backend=self.faulty))

    def device(self) -> Any:
        return self.opened().device

    def type1(self) -> Any:
        return self.opened().iommu

    def tracker(self) -> Any:
        machine(self.be).set_dirty_semantics("exact")
        t = DirtyTracker(self.type1())
        t.start()  # report() before start() is a StateError (branch api); these cases test ranges
        return t

    def iommufd(self) -> Any:
        return self.keep(IommuFd(backend=self.faulty))

    def ioas(self) -> Any:
        return self.iommufd().ioas_alloc()

    def idev(self) -> Any:
        return self.iommufd().bind(BDF)

    def spapr(self) -> Any:
        pb = FaultyBackend(power_backend())
        self.faulty = pb
        c = self.keep(Container(backend=pb))
        c.attach(Group(0, backend=pb))
        return c.set_iommu("SPAPR_TCE_v2")

    def buf(self) -> Any:
        return self.keep(DmaBuffer(PAGE, hugepages=None))


#: (id, what the call needs from the World, the call, the expected error class)
CASES: list[tuple[str, Callable[[World], Callable[[], Any]], type]] = [
    # kvm
    ("add_memslot-negative-gpa", lambda w: (lambda vm=w.vm(), m=w.mem(): vm.add_memslot(m, -4096, 4096)), RangeError),
    ("add_memslot-float-gpa", lambda w: (lambda vm=w.vm(), m=w.mem(): vm.add_memslot(m, 4096.0, 4096)), ArgumentError),
    ("add_memslot-none-size", lambda w: (lambda vm=w.vm(): vm.add_memslot(0x10000, 0, None)), ArgumentError),
    ("add_memslot-float-size", lambda w: (lambda vm=w.vm(), m=w.mem(): vm.add_memslot(m, 0, 4096.5)), ArgumentError),
    ("add_memslot-huge-slot", lambda w: (lambda vm=w.vm(), m=w.mem(): vm.add_memslot(m, 0, 4096, slot=2**32)), RangeError),
    ("add_memslot-negative-as", lambda w: (lambda vm=w.vm(), m=w.mem(): vm.add_memslot(m, 0, 4096, as_id=-1)), RangeError),
    ("slot-move-negative", lambda w: (lambda s=w.slot(): s.move(-4096)), RangeError),
    ("slot-move-float", lambda w: (lambda s=w.slot(): s.move(4096.0)), ArgumentError),
    ("vm-irqfd-negative", lambda w: (lambda vm=w.vm(): vm.irqfd(-1)), RangeError),
    ("vm-enable-cap-negative", lambda w: (lambda vm=w.vm(): vm.enable_cap(-1)), RangeError),
    ("vm-enable-cap-arg-huge", lambda w: (lambda vm=w.vm(): vm.enable_cap(1, 2**64)), RangeError),
    ("vm-raw-region-negative", lambda w: (lambda vm=w.vm(): vm.set_user_memory_region(0, 0, -1, 4096, 0)), RangeError),
    ("vm-raw-region-float", lambda w: (lambda vm=w.vm(): vm.set_user_memory_region(0, 0, 1.5, 4096, 0)), ArgumentError),
    ("vm-raw-region2-negative", lambda w: (lambda vm=w.vm(): vm.set_user_memory_region2(-1, 0, 0, 4096, 0)), RangeError),
    ("vm-raw-dirty-log-negative", lambda w: (lambda vm=w.vm(): vm.get_dirty_log(-1, 0)), RangeError),
    ("vm-raw-clear-log-negative", lambda w: (lambda vm=w.vm(): vm.clear_dirty_log(0, -64, 64, 0)), RangeError),
    ("vm-create-vcpu-negative", lambda w: (lambda vm=w.vm(): vm.create_vcpu(-1)), RangeError),
    ("vm-ioeventfd-negative", lambda w: (lambda vm=w.vm(): vm.ioeventfd(-1)), ArgumentError),
    ("kvm-create-vm-negative", lambda w: (lambda k=w.kvm(): k.create_vm(-1)), RangeError),
    ("guestmemory-2**64", lambda w: (lambda: GuestMemory.anonymous(2**64, backend=w.faulty)), RangeError),
    ("guestmemory-float", lambda w: (lambda: GuestMemory.anonymous(4096.0, backend=w.faulty)), ArgumentError),
    # vfio device
    ("irq_info-2**32", lambda w: (lambda d=w.device(): d.irq_info(2**32)), RangeError),
    ("irq_info-float", lambda w: (lambda d=w.device(): d.irq_info(1.0)), ArgumentError),
    ("region_info-2**32", lambda w: (lambda d=w.device(): d.region_info(2**32)), RangeError),
    ("device-read-2**32", lambda w: (lambda d=w.device(): d.read(2**32, 0, 4)), RangeError),
    ("device-read-float-offset", lambda w: (lambda d=w.device(): d.read(0, 1.5, 4)), ArgumentError),
    ("set_irqs-negative-index", lambda w: (lambda d=w.device(): d.set_irqs(-1, 0x21)), RangeError),
    ("set_irqs-float-flags", lambda w: (lambda d=w.device(): d.set_irqs(0, 33.0)), ArgumentError),
    ("mask_irq-2**32", lambda w: (lambda d=w.device(): d.mask_irq(0, 2**32)), RangeError),
    # type1 and its services
    ("dirty-report-negative", lambda w: (lambda t=w.tracker(): t.report(-4096, 8192)), RangeError),
    ("dirty-report-float", lambda w: (lambda t=w.tracker(): t.report(4096.0, 8192)), ArgumentError),
    ("dirty-plan-negative", lambda w: (lambda t=w.tracker(): t.plan(-4096, 8192)), RangeError),
    ("unmap_and_report-none", lambda w: (lambda t=w.tracker(): t.unmap_and_report(None)), ArgumentError),
    ("type1-map-float-iova", lambda w: (lambda i=w.type1(), b=w.buf(): i.map(b, 4096.0)), ArgumentError),
    ("type1-unmap-none", lambda w: (lambda i=w.type1(): i.unmap(None)), ArgumentError),
    ("dmamapper-map-none", lambda w: (lambda m=DmaMapper(w.type1()): m.map(None)), ArgumentError),
    ("dmamapper-map-float-size", lambda w: (lambda m=DmaMapper(w.type1()), b=w.buf(): m.map(b, size=4096.0)), ArgumentError),
    ("dmabuffer-none-size", lambda w: (lambda: DmaBuffer(None, backend=w.faulty)), ArgumentError),
    ("dmabuffer-float-size", lambda w: (lambda: DmaBuffer(4096.0, backend=w.faulty)), ArgumentError),
    ("dmabuffer-2**64", lambda w: (lambda: DmaBuffer(2**64, backend=w.faulty)), RangeError),
    ("dmabuffer-float-align", lambda w: (lambda: DmaBuffer(4096, hugepages=None, align=1.0, backend=w.faulty)), ArgumentError),
    ("dmamapper-map-negative-align", lambda w: (lambda m=DmaMapper(w.type1()), b=w.buf(): m.map(b, align=-1)), ArgumentError),
    ("dmamapper-map-zero-align", lambda w: (lambda m=DmaMapper(w.type1()), b=w.buf(): m.map(b, align=0)), ArgumentError),
    ("device-write-none", lambda w: (lambda d=w.device(): d.write(0, 0, None)), ArgumentError),
    ("device-write-int", lambda w: (lambda d=w.device(): d.write(0, 0, 4)), ArgumentError),
    # groups and containers
    ("group-number_of-int", lambda w: (lambda: Group.number_of(3, backend=w.faulty)), ArgumentError),
    ("open_device-none", lambda w: (lambda: open_device(None, backend=w.faulty)), ArgumentError),
    ("container-attach-none", lambda w: (lambda c=w.keep(Container(backend=w.faulty)): c.attach(None)), ArgumentError),
    # iommufd
    ("iommufd-destroy-negative", lambda w: (lambda f=w.iommufd(): f.destroy(-1)), RangeError),
    ("iommufd-get_hw_info-negative", lambda w: (lambda f=w.iommufd(): f.get_hw_info(-1)), RangeError),
    ("iommufd-bind-int", lambda w: (lambda f=w.iommufd(): f.bind(3)), ArgumentError),
    ("cdev_path-int", lambda w: (lambda: cdev_path(1, backend=w.faulty)), ArgumentError),
    ("iommufd-attach-2**32", lambda w: (lambda d=w.idev(): d.attach(2**32)), RangeError),
    ("iommufd-attach-none", lambda w: (lambda d=w.idev(): d.attach(None)), ArgumentError),
    ("ioas-map-raw-negative", lambda w: (lambda a=w.ioas(): a.map_raw(0, 4096, -4096)), RangeError),
    ("ioas-unmap-raw-negative", lambda w: (lambda a=w.ioas(): a.unmap_raw(-4096, 4096)), RangeError),
    ("ioas-map-float-iova", lambda w: (lambda a=w.ioas(), b=w.buf(): a.map(b, 4096.0)), ArgumentError),
    ("ioas-unmap-none", lambda w: (lambda a=w.ioas(): a.unmap(None)), ArgumentError),
    # sPAPR raw methods
    ("spapr-register-negative", lambda w: (lambda i=w.spapr(): i.register_memory(-4096, 4096)), RangeError),
    ("spapr-unregister-huge", lambda w: (lambda i=w.spapr(): i.unregister_memory(0, 2**64)), RangeError),
    ("spapr-tce-create-negative", lambda w: (lambda i=w.spapr(): i.tce_create(-1, 1 << 30)), RangeError),
    ("spapr-tce-remove-negative", lambda w: (lambda i=w.spapr(): i.tce_remove(-1)), RangeError),
    ("spapr-map-float-iova", lambda w: (lambda i=w.spapr(), b=w.buf(): i.map(b, 4096.0)), ArgumentError),
    ("spapr-map-dma-negative", lambda w: (lambda i=w.spapr(): i.map_dma(0, -4096, 4096)), RangeError),
    ("spapr-eeh-negative", lambda w: (lambda i=w.spapr(): i.eeh_pe_op(-1)), RangeError),
    ("spapr-create-window-float", lambda w: (lambda i=w.spapr(): i.create_window(4096.0, 1 << 30)), ArgumentError),
]


@pytest.mark.parametrize("make, expected", [pytest.param(m, e, id=i) for i, m, e in CASES])
def test_typed_error_and_no_syscall(be, make, expected):
    w = World(be)
    try:
        call = make(w)
        mark = w.faulty.mark()
        with pytest.raises(Exception) as e:
            call()
        assert isinstance(e.value, expected), f"{type(e.value).__name__}: {e.value}"
        assert w.faulty.since(mark) == [], "syscalls were issued before the refusal"
    finally:
        w.close()


def test_numpy_integer_sizes_allocate_iovas(be):
    """Item 12: numpy integers are integers (size, offset, align)."""
    with open_device(BDF, backend=be) as d, DmaBuffer(2 * PAGE, hugepages=None) as buf:
        mapper = DmaMapper(d.iommu)
        m = mapper.map(buf, size=np.uint64(PAGE), offset=np.int64(PAGE), align=np.uint32(1 << 20))
        assert (m.size, m.vaddr, m.iova % (1 << 20)) == (PAGE, buf.addr + PAGE, 0)
        assert type(m.size) is int and type(m.iova) is int
        m.unmap()


def test_dmamapper_cached_span_honours_align(be):
    """A span already mapped at an IOVA without the requested alignment is refused, not
    returned (it used to come back unaligned from the cache)."""
    with open_device(BDF, backend=be) as d, DmaBuffer(2 * PAGE, hugepages=None) as buf:
        mapper = DmaMapper(d.iommu)
        mapper.map(buf, size=PAGE)                        # takes the first block
        m = mapper.map(buf, size=PAGE, offset=PAGE)       # lands one page up: not 64 KiB aligned
        assert m.iova % (1 << 16)
        with pytest.raises(ArgumentError, match="not aligned"):
            mapper.map(buf, size=PAGE, offset=PAGE, align=1 << 16)
        assert mapper.map(buf, size=PAGE, offset=PAGE, align=PAGE) is m
        mapper.unmap_all()
