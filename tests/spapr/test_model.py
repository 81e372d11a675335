"""Property tests of the sPAPR v2 library against the mock kernel (host only, fast).

* pyvfio's pre-checks and the kernel agree: a checked ``map``/``register``/``unregister_range``
  either raises an ArgumentError (nothing reaches the kernel) or succeeds; the kernel never has
  to refuse what pyvfio let through.
* After any sequence of operations, what pyvfio believes (regions, mappings) is what the mock
  kernel holds (registered regions, TCEs), and locked memory is exactly the registered bytes.
* Error paths leak nothing: a refused operation leaves no mapping, no region, no pin.
"""

from __future__ import annotations

import errno

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvfio.errors import ArgumentError, BusyError, PyvfioError
from pyvfio.mockkernel.vfio.spapr import POWER_EDU_GROUP, power_kernel
from pyvfio.mockkernel.vfio import shutdown
from pyvfio.seam.mock import MockBackend
from pyvfio.services.dma import DmaBuffer
from pyvfio.vfio import Container, Group
from pyvfio.testing import machine

PAGE = 4096
BUF_PAGES = 64
GiB = 1 << 30


def _kernel_view(iommu):
    drv = machine(iommu.container.backend).iommu(iommu.container)
    regions = {(p.ua, p.size) for p in drv.prereg}
    tces = {}
    for w in drv.tables:
        if w is not None:
            for entry, (ua, _dir, _r) in w.tces.items():
                tces[w.start + (entry << w.page_shift)] = ua
    return drv, regions, tces


op = st.one_of(
    st.tuples(st.just("register"), st.integers(0, BUF_PAGES), st.integers(0, BUF_PAGES),
              st.integers(0, 3)),
    st.tuples(st.just("map"), st.integers(0, BUF_PAGES), st.integers(0, 8),
              st.integers(0, 2 * BUF_PAGES)),
    st.tuples(st.just("unmap"), st.integers(0, 7)),
    st.tuples(st.just("unregister"), st.integers(0, 7)),
    st.tuples(st.just("unregister_range"), st.integers(0, BUF_PAGES), st.integers(0, BUF_PAGES)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(op, max_size=25))
def test_checked_api_and_kernel_agree(ops):
    kernel = power_kernel()
    be = MockBackend(kernel)
    buf = DmaBuffer(BUF_PAGES * PAGE, hugepages=None, backend=be)
    try:
        with Container(backend=be) as c:
            c.attach(Group(POWER_EDU_GROUP, backend=be))
            iommu = c.set_iommu("SPAPR_TCE_v2")
            task = kernel.state["vfio"].task
            base = task.pinned
            for o in ops:
                try:
                    if o[0] == "register":
                        _, first, npages, misalign = o
                        iommu.register(buf.addr + first * PAGE + misalign, size=npages * PAGE)
                    elif o[0] == "map":
                        _, first, npages, iova_page = o
                        iommu.map(buf.addr + first * PAGE, iova=iova_page * PAGE, size=npages * PAGE)
                    elif o[0] == "unmap":
                        ms = sorted(iommu.mappings.values(), key=lambda m: m.iova)
                        if ms:
                            ms[o[1] % len(ms)].unmap()
                    elif o[0] == "unregister":
                        rs = sorted(iommu.regions.values(), key=lambda r: r.vaddr)
                        if rs:
                            rs[o[1] % len(rs)].unregister()
                    else:
                        _, first, npages = o
                        iommu.unregister_range(buf.addr + first * PAGE, npages * PAGE)
                except (ArgumentError, BusyError) as e:
                    if isinstance(e, BusyError):
                        assert e.errno == errno.EBUSY
                except PyvfioError as e:  # pragma: no cover - the property under test
                    pytest.fail(f"{o}: the kernel refused what pyvfio let through: {e}")
                drv, regions, tces = _kernel_view(iommu)
                assert regions == {(r.vaddr, r.size) for r in iommu.regions.values()}
                want = {}
                for m in iommu.mappings.values():
                    for off in range(0, m.size, PAGE):
                        want[m.iova + off] = m.vaddr + off
                assert tces == want
                assert task.pinned - base == sum(r.size for r in iommu.regions.values())
                for r in iommu.regions.values():
                    assert {id(m) for m in r.mappings} == {
                        id(m) for m in iommu.mappings.values() if r.contains(m.vaddr, m.size)}
            c.close()
            assert task.pinned == base
            assert buf.mappings == ()
    finally:
        buf.close()
        shutdown(kernel)


def test_refused_operations_leak_nothing():
    kernel = power_kernel()
    be = MockBackend(kernel)
    task = kernel.state["vfio"].task
    try:
        with Container(backend=be) as c, \
                DmaBuffer(1 << 20, hugepages=None, align=0x10000, backend=be) as buf:
            c.attach(Group(POWER_EDU_GROUP, backend=be))
            iommu = c.set_iommu("SPAPR_TCE_v2")
            base = task.pinned
            # the kernel refuses a registration of unmapped memory: nothing recorded, nothing pinned
            gone = DmaBuffer(1 << 16, hugepages=None, backend=be)
            addr = gone.addr
            gone.close()
            with pytest.raises(PyvfioError) as e:
                iommu.register(addr, size=1 << 16)
            assert e.value.errno == errno.EFAULT
            assert not iommu.regions and task.pinned == base
            # over RLIMIT_MEMLOCK without CAP_IPC_LOCK: ENOMEM with the sPAPR hint, no pin
            task.cap_ipc_lock_override = False
            task.rlimit_override = task.locked_vm() + (1 << 16)
            with pytest.raises(PyvfioError) as e:
                iommu.register(buf)
            assert e.value.errno == errno.ENOMEM and "RLIMIT_MEMLOCK" in (e.value.hint or "")
            assert not iommu.regions and task.pinned == base
            task.cap_ipc_lock_override = None
            task.rlimit_override = None
            # the kernel refuses a map (64 KiB window, 4 KiB pages): no mapping, buffer not pinned
            mem = iommu.register(buf)
            w = iommu.create_window(0x10000, GiB)
            with pytest.raises(PyvfioError) as e:
                iommu.map(buf, iova=w.start, size=0x10000)
            assert e.value.errno == errno.EINVAL
            assert not iommu.mappings and not mem.mappings and buf.mappings == ()
            # a refused window leaves the window list as it was
            with pytest.raises(PyvfioError) as e:
                iommu.create_window(4096, GiB)
            assert e.value.errno == errno.ENOSPC
            assert len(iommu.windows) == 2
            iommu.remove_window(w)
            mem.unregister()
            assert task.pinned == base
    finally:
        shutdown(kernel)


def test_v1_enable_over_the_memlock_limit_is_enomem_with_a_hint():
    kernel = power_kernel()
    be = MockBackend(kernel)
    task = kernel.state["vfio"].task
    try:
        with Container(backend=be) as c:
            c.attach(Group(POWER_EDU_GROUP, backend=be))
            iommu = c.set_iommu("SPAPR_TCE")
            task.cap_ipc_lock_override = False
            task.rlimit_override = 64 << 20
            with pytest.raises(PyvfioError) as e:
                iommu.enable()
            assert e.value.errno == errno.ENOMEM and "window" in (e.value.hint or "")
            assert not iommu.enabled
            task.cap_ipc_lock_override = True
            iommu.enable()
            assert iommu.enabled
    finally:
        shutdown(kernel)


class _ClosingBuffer:
    """A buffer closed by another thread between pyvfio's checks and the pin (``_pin`` raises)."""

    def __init__(self, buf):
        self.addr, self.size = buf.addr, buf.size

    def _pin(self, mapping):
        from pyvfio.errors import StateError

        raise StateError("DmaBuffer is closed")


def test_map_of_a_buffer_closed_meanwhile_leaves_no_tce():
    """If the buffer cannot be pinned, the kernel mapping is undone and nothing is recorded."""
    from pyvfio.errors import StateError

    kernel = power_kernel()
    be = MockBackend(kernel)
    try:
        with Container(backend=be) as c, \
                DmaBuffer(1 << 16, hugepages=None, align=0x10000, backend=be) as buf:
            c.attach(Group(POWER_EDU_GROUP, backend=be))
            iommu = c.set_iommu("SPAPR_TCE_v2")
            mem = iommu.register(buf)
            iova = iommu.windows[0].start
            with pytest.raises(StateError):
                iommu.map(_ClosingBuffer(buf), iova=iova, size=PAGE)
            _drv, _regions, tces = _kernel_view(iommu)
            assert tces == {} and not iommu.mappings and not mem.mappings
            mem.unregister()  # nothing maps it: no BusyError
    finally:
        shutdown(kernel)
