"""Property-based tests (issue 21): bad values of every kind into the public entry points must
raise a typed error before any syscall; the mapping table / IOVA allocator and KVM memslots
against small reference models, on the mock kernel.

Bad values: negative, beyond 64 bits, unaligned, floats, numpy floats, negative numpy integers,
None, strings, bytes, lists, plain objects, Decimals. The expected error is the library's
ArgumentError (a ValueError: AlignmentError, RangeError, OverlapError...) or StateError, and
the FaultyBackend's log must show no call at all.
"""

from __future__ import annotations

import decimal
import mmap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, precondition, rule

from pyvfio.errors import ArgumentError, StateError
from pyvfio.iommufd import open_device as iommufd_open_device
from pyvfio.kvm import GuestMemory, Kvm
from pyvfio.seam.mock import MockBackend
from pyvfio.services.dirty import DirtyTracker
from pyvfio.services.dma import DmaBuffer, DmaMapper
from pyvfio.testing import FaultyBackend, machine, power_backend
from pyvfio.vfio import Container, Group, open_device

PAGE = mmap.PAGESIZE
BDF = "0000:00:03.0"
TYPED = (ArgumentError, StateError)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- bad values -------------------------------------------------------------------------------
not_ints = st.one_of(
    st.floats(allow_nan=True), st.none(), st.text(max_size=3), st.binary(max_size=3),
    st.lists(st.integers(0, 9), max_size=2), st.just(object()), st.complex_numbers(max_magnitude=9),
    st.floats(-1e6, 1e6).map(np.float64), st.decimals(allow_nan=False, places=1).map(decimal.Decimal),
)
negative = st.one_of(st.integers(max_value=-1), st.integers(-2**63, -1).map(np.int64))
huge = st.integers(min_value=2**64, max_value=2**80)
unaligned = st.integers(1, 2**40).filter(lambda v: v % PAGE != 0)
bad_int = st.one_of(not_ints, negative, huge)
bad_address = st.one_of(bad_int, unaligned)
#: for parameters where None means "the default" (size=, align=, slot=...)
bad_optional = bad_int.filter(lambda v: v is not None)


class World:
    """One set of objects per test (on one mock kernel, behind a logging FaultyBackend)."""

    def __init__(self) -> None:
        self.inner = MockBackend()
        machine(self.inner).set_dirty_semantics("exact")
        self.be = FaultyBackend(self.inner)
        self.od = open_device(BDF, backend=self.be)
        self.buf = DmaBuffer(4 * PAGE, hugepages=None, backend=self.be)
        self.mapper = DmaMapper(self.od.iommu)
        self.tracker = DirtyTracker(self.od.iommu)
        self.kvm = Kvm(backend=self.be)
        self.vm = self.kvm.create_vm()
        self.vm.max_slots, self.vm.address_spaces, self.vm._valid_flags()  # cached up front
        self.mem = GuestMemory.anonymous(4 * PAGE, backend=self.be)
        self.device = self.od.device
        self.device.region_info(0)
        self.device.irq_info(0)
        self.closed_buf = DmaBuffer(PAGE, hugepages=None, backend=self.be)
        self.closed_buf.close()

    def close(self) -> None:
        self.mem.close()
        self.kvm.close()
        self.od.close()
        self.buf.close()
        machine(self.inner).shutdown()


class IommufdWorld:
    def __init__(self) -> None:
        self.inner = MockBackend()
        self.be = FaultyBackend(self.inner)
        self.od = iommufd_open_device(BDF, backend=self.be)   # attached: alignment and MSI window
        self.ioas = self.od.ioas
        self.ioas.info()
        self.buf = DmaBuffer(4 * PAGE, hugepages=None, backend=self.be)

    def close(self) -> None:
        self.od.close()
        self.buf.close()
        machine(self.inner).shutdown()


class SpaprWorld:
    def __init__(self) -> None:
        self.inner = power_backend()
        self.be = FaultyBackend(self.inner)
        self.c = Container(backend=self.be)
        self.c.attach(Group(0, backend=self.be))
        self.iommu = self.c.set_iommu("SPAPR_TCE_v2")
        self.iommu.info()
        self.buf = DmaBuffer(4 * PAGE, hugepages=None, backend=self.be)
        self.iommu.register(self.buf)

    def close(self) -> None:
        self.c.close()
        self.buf.close()
        machine(self.inner).shutdown()


@pytest.fixture(scope="module")
def world():
    w = World()
    yield w
    w.close()


@pytest.fixture(scope="module")
def fdworld():
    w = IommufdWorld()
    yield w
    w.close()


@pytest.fixture(scope="module")
def spworld():
    w = SpaprWorld()
    yield w
    w.close()


def refused(be: FaultyBackend, call) -> None:
    """``call()`` raises a typed error and issues no syscall."""
    mark = be.mark()
    with pytest.raises(Exception) as e:
        call()
    assert isinstance(e.value, TYPED), f"{type(e.value).__name__}: {e.value}"
    assert be.since(mark) == [], f"syscalls before the refusal: {be.since(mark)}"


# -- type1 ------------------------------------------------------------------------------------
@SETTINGS
@given(iova=st.one_of(bad_address, st.integers(0xFEE00, 0xFEEFF).map(lambda p: p * PAGE),
                      st.integers(2**39 // PAGE, 2**52).map(lambda p: p * PAGE)))
def test_type1_map_bad_iova(world, iova):
    refused(world.be, lambda: world.od.iommu.map(world.buf, iova))


@SETTINGS
@given(size=st.one_of(bad_optional, st.just(0), st.integers(1, 8 * PAGE).filter(lambda v: v % PAGE or v > 4 * PAGE)),
       offset=st.one_of(st.just(0), bad_int, unaligned.filter(lambda v: v < 4 * PAGE)))
def test_type1_map_bad_span(world, size, offset):
    refused(world.be, lambda: world.od.iommu.map(world.buf, 1 << 20, size=size, offset=offset))


@SETTINGS
@given(buffer=st.one_of(not_ints.filter(lambda v: not hasattr(v, "__index__")), st.just("closed")))
def test_type1_map_bad_buffer(world, buffer):
    b = world.closed_buf if buffer == "closed" else buffer
    refused(world.be, lambda: world.od.iommu.map(b, 1 << 20))


@SETTINGS
@given(mapping=st.one_of(not_ints, st.integers(), negative))
def test_unmap_takes_only_a_mapping(world, fdworld, spworld, mapping):
    refused(world.be, lambda: world.od.iommu.unmap(mapping))
    refused(fdworld.be, lambda: fdworld.ioas.unmap(mapping))
    refused(spworld.be, lambda: spworld.iommu.unmap(mapping))


# -- iommufd and sPAPR ----------------------------------------------------------------------------
@SETTINGS
@given(iova=st.one_of(bad_optional, unaligned, st.integers(0xFEE00, 0xFEEFF).map(lambda p: p * PAGE)),
       size=st.one_of(st.none(), bad_optional, st.just(0), st.integers(4 * PAGE + 1, 2**40)))
def test_ioas_map_bad_values(fdworld, iova, size):
    refused(fdworld.be, lambda: fdworld.ioas.map(fdworld.buf, iova, size=size if size is not None else PAGE))
    if size is not None:
        refused(fdworld.be, lambda: fdworld.ioas.map(fdworld.buf, size=size))


@SETTINGS
@given(iova=st.one_of(bad_address, st.integers(2**40 // PAGE, 2**50).map(lambda p: p * PAGE)),
       size=st.one_of(st.none(), bad_optional, st.just(0), unaligned.filter(lambda v: v < 4 * PAGE)))
def test_spapr_map_bad_values(spworld, iova, size):
    refused(spworld.be, lambda: spworld.iommu.map(spworld.buf, iova))
    if size is not None:
        refused(spworld.be, lambda: spworld.iommu.map(spworld.buf, 0, size=size))


# -- services ------------------------------------------------------------------------------------
@SETTINGS
@given(size=st.one_of(not_ints, negative, st.just(0), huge),
       hugepages=st.sampled_from(["thp", None, "hugetlbfs"]))
def test_dmabuffer_bad_size(world, size, hugepages):
    refused(world.be, lambda: DmaBuffer(size, hugepages=hugepages, backend=world.be))


@SETTINGS
@given(align=st.one_of(bad_optional, st.just(0), st.integers(1, 2**20).filter(lambda v: v & (v - 1) or v < PAGE)))
def test_dmabuffer_bad_align(world, align):
    refused(world.be, lambda: DmaBuffer(PAGE, hugepages=None, align=align, backend=world.be))


@SETTINGS
@given(what=st.sampled_from(["buffer", "size", "offset", "align"]),
       value=st.one_of(bad_optional))
def test_dmamapper_map_bad_values(world, what, value):
    kw = {what: value}
    buffer = kw.pop("buffer", world.buf)
    refused(world.be, lambda: world.mapper.map(buffer, **kw))


@SETTINGS
@given(iova=st.one_of(bad_optional, st.integers(2**39, 2**63)),
       size=st.one_of(bad_optional, st.integers(2**40, 2**63)))
def test_dirty_report_bad_range(world, iova, size):
    refused(world.be, lambda: world.tracker.report(iova, size))
    refused(world.be, lambda: world.tracker.report(1 << 20, size))


# -- KVM ---------------------------------------------------------------------------------------
@SETTINGS
@given(what=st.sampled_from(["gpa", "size", "offset", "slot", "as_id"]),
       value=st.one_of(bad_optional, unaligned.filter(lambda v: v < 2**30)))
def test_add_memslot_bad_values(world, what, value):
    kw = {"gpa": 0x100000, "size": PAGE}
    kw[what] = value
    if what in ("slot", "as_id") and isinstance(value, int) and value >= 0 and value < 2**64:
        value = kw[what] = value + 2**32  # an id no VM has
    gpa = kw.pop("gpa")
    refused(world.be, lambda: world.vm.add_memslot(world.mem, gpa, **kw))


# -- the VFIO device -----------------------------------------------------------------------------
@SETTINGS
@given(index=st.one_of(bad_int, st.integers(2**32, 2**40)))
def test_device_info_bad_index(world, index):
    refused(world.be, lambda: world.device.region_info(index))
    refused(world.be, lambda: world.device.irq_info(index))
    refused(world.be, lambda: world.device.set_irqs(index, 0x21))


@SETTINGS
@given(what=st.sampled_from(["index", "offset", "size"]), value=st.one_of(not_ints, negative, huge))
def test_device_read_write_bad_values(world, what, value):
    args = {"index": 0, "offset": 0, "size": 4}
    args[what] = value
    refused(world.be, lambda: world.device.read(args["index"], args["offset"], args["size"]))
    if what != "size":
        refused(world.be, lambda: world.device.write(args["index"], args["offset"], b"\0\0\0\0"))


@SETTINGS
@given(data=st.one_of(st.none(), st.integers(), st.floats(), st.lists(st.integers(), max_size=2),
                      st.just(object())))
def test_device_write_bad_data(world, data):
    refused(world.be, lambda: world.device.write(0, 0, data))


def test_closed_objects_refuse_without_syscalls():
    inner = MockBackend()
    be = FaultyBackend(inner)
    try:
        od = open_device(BDF, backend=be)
        iommu, dev = od.iommu, od.device
        buf = DmaBuffer(PAGE, hugepages=None, backend=be)
        kvm = Kvm(backend=be)
        vm = kvm.create_vm()
        mem = GuestMemory.anonymous(PAGE, backend=be)
        od.close()
        kvm.close()
        mem.close()
        for call in (lambda: iommu.map(buf, 1 << 20), lambda: dev.read(0, 0, 4),
                     lambda: dev.region_info(0), lambda: dev.irq_info(0),
                     lambda: vm.add_memslot(mem, 0, PAGE)):
            refused(be, call)
        buf.close()
        kvm2 = Kvm(backend=be)
        vm2 = kvm2.create_vm()
        refused(be, lambda: vm2.add_memslot(mem, 0, PAGE))       # closed memory
        kvm2.close()
    finally:
        machine(inner).shutdown()


# -- reference models ----------------------------------------------------------------------------
class MapperModel(RuleBasedStateMachine):
    """A DmaMapper over type1 on the mock: map spans of a few buffers, unmap, close buffers.
    The model is the set of live (buffer, offset, size) spans; invariants tie pyvfio's table,
    the allocator and the kernel's mappings to it."""

    mappings = Bundle("mappings")

    def __init__(self) -> None:
        super().__init__()
        self.inner = MockBackend()
        self.od = open_device(BDF, backend=self.inner)
        self.mapper = DmaMapper(self.od.iommu)
        self.bufs = [DmaBuffer(8 * PAGE, hugepages=None, backend=self.inner) for _ in range(3)]
        self.live: dict[tuple[int, int, int], object] = {}

    @rule(target=mappings, b=st.integers(0, 2), off=st.integers(0, 7), pages=st.integers(1, 8),
          align=st.sampled_from([None, PAGE, 1 << 16, 1 << 20]))
    def map(self, b, off, pages, align):
        pages = min(pages, 8 - off)
        key = (b, off * PAGE, pages * PAGE)
        old = self.live.get(key)
        if old is not None and align and old.iova % align:  # cached, but not aligned so
            with pytest.raises(ArgumentError):
                self.mapper.map(self.bufs[b], size=pages * PAGE, offset=off * PAGE, align=align)
            return old
        m = self.mapper.map(self.bufs[b], size=pages * PAGE, offset=off * PAGE, align=align)
        if key in self.live:
            assert m is self.live[key]   # the cache: one mapping per span
        self.live[key] = m
        if align:
            assert m.iova % align == 0
        return m

    @rule(m=consumes(mappings))
    def unmap(self, m):
        if m.closed:
            return
        key = next(k for k, v in self.live.items() if v is m)
        m.unmap()
        del self.live[key]

    @precondition(lambda self: len(self.live) > 3)
    @rule()
    def unmap_all(self):
        self.mapper.unmap_all()
        self.live.clear()

    @invariant()
    def tables_agree(self):
        ms = sorted(self.live.values(), key=lambda m: m.iova)
        assert sorted(self.od.iommu.mappings) == [m.iova for m in ms]
        assert len(self.mapper) == len(ms)
        kernel = machine(self.inner).dma_mappings(self.od.container)
        want = [(m.iova, m.size, self.bufs[b].addr + off) for (b, off, _), m in
                sorted(self.live.items(), key=lambda kv: kv[1].iova)]
        assert kernel == want
        for a, b in zip(ms, ms[1:]):
            assert a.iova + a.size <= b.iova          # the allocator never overlaps
        assert all(len(buf.mappings) == sum(1 for k in self.live if k[0] == i)
                   for i, buf in enumerate(self.bufs))

    def teardown(self):
        try:
            self.od.close()
            assert machine(self.inner).resources()["pinned"] == 0
            for b in self.bufs:
                b.close()
        finally:
            machine(self.inner).shutdown()


TestMapperModel = MapperModel.TestCase
TestMapperModel.settings = settings(max_examples=30, stateful_step_count=25, deadline=None)


class MemslotModel(RuleBasedStateMachine):
    """KVM memslots on the mock: add (lowest free id), move, toggle dirty logging, delete; the
    model is gpa ranges per slot; a refused add must be an OverlapError exactly when the model
    says the range overlaps."""

    slots = Bundle("slots")
    NPAGES = 64

    def __init__(self) -> None:
        super().__init__()
        self.inner = MockBackend()
        self.kvm = Kvm(backend=self.inner)
        self.vm = self.kvm.create_vm()
        self.mem = GuestMemory.anonymous(self.NPAGES * PAGE, backend=self.inner)
        self.model: dict[object, tuple[int, int, int, bool]] = {}   # slot -> gpa, size, hva, log

    def _overlaps(self, gpa, size, exclude=None):
        return any(s is not exclude and g < gpa + size and gpa < g + n
                   for s, (g, n, _h, _l) in self.model.items())

    @rule(target=slots, gpa_page=st.integers(0, 255), pages=st.integers(1, 8), off=st.integers(0, 63),
          log=st.booleans())
    def add(self, gpa_page, pages, off, log):
        from pyvfio.errors import OverlapError

        pages = min(pages, self.NPAGES - off)
        gpa, size = gpa_page * PAGE, pages * PAGE
        if self._overlaps(gpa, size):
            with pytest.raises(OverlapError):
                self.vm.add_memslot(self.mem, gpa, size, offset=off * PAGE, log_dirty=log)
            return None
        s = self.vm.add_memslot(self.mem, gpa, size, offset=off * PAGE, log_dirty=log)
        self.model[s] = (gpa, size, self.mem.addr + off * PAGE, log)
        return s

    @rule(s=slots, gpa_page=st.integers(0, 255))
    def move(self, s, gpa_page):
        from pyvfio.errors import OverlapError

        if s is None or s not in self.model:
            return
        g, n, h, log = self.model[s]
        gpa = gpa_page * PAGE
        if self._overlaps(gpa, n, exclude=s):
            with pytest.raises(OverlapError):
                s.move(gpa)
            return
        s.move(gpa)
        self.model[s] = (gpa, n, h, log)

    @rule(s=slots, on=st.booleans())
    def dirty_logging(self, s, on):
        if s is None or s not in self.model:
            return
        s.set_dirty_logging(on)
        g, n, h, _ = self.model[s]
        self.model[s] = (g, n, h, on)

    @rule(s=consumes(slots))
    def delete(self, s):
        if s is None or s not in self.model:
            return
        s.delete()
        del self.model[s]

    @invariant()
    def kernels_agree(self):
        live = self.vm.memslots
        assert set(live) == set(self.model)
        assert {(s.gpa, s.size, s.hva, s.log_dirty) for s in live} == set(self.model.values())
        kernel = machine(self.inner).memslots(self.vm)
        assert kernel == {(s.as_id, s.slot): (s.gpa, s.size, s.hva, s.flags) for s in live}
        assert sorted(s.slot for s in live) == list(range(len(live))) or len(live) == 0 or \
            len({s.slot for s in live}) == len(live)
        assert self.mem.users == len(live)

    def teardown(self):
        try:
            self.kvm.close()
            assert self.mem.users == 0
            self.mem.close()
        finally:
            machine(self.inner).shutdown()


TestMemslotModel = MemslotModel.TestCase
TestMemslotModel.settings = settings(max_examples=30, stateful_step_count=30, deadline=None)
