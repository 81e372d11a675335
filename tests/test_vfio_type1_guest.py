"""The container/group/type1 scenarios of tests/scenarios/type1.py against the real kernel,
inside the QEMU guests (intel and amd vIOMMUs; edu bound to vfio-pci by the test bed's agent).

The very same scenario functions run on the mock in tests/test_vfio_type1_mock.py: both must
give the same outcomes (errnos, sizes, DMA bytes, locked memory).
"""

from __future__ import annotations

import pytest
from scenarios import Env, guest_env
from scenarios import type1 as sc

pytestmark = pytest.mark.guest(variants=["intel", "amd"])


@pytest.fixture
def env(guest_info, guest_variant) -> Env:
    return guest_env(guest_info, guest_variant)


@pytest.mark.parametrize("scenario", sc.ALL, ids=lambda f: f.__name__.removeprefix("scenario_"))
def test_scenario(scenario, env, no_fd_leak):
    scenario(env)


def test_group_busy_names_the_holding_process(env, no_fd_leak):
    """EBUSY on a group another process holds: the hint names that process (from /proc)."""
    import subprocess
    import sys

    from pyvfio.errors import BusyError
    from pyvfio.seam import get_backend
    from pyvfio.vfio import Group

    number = Group.number_of(env.bdf, backend=get_backend("real"))
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import os,sys; fd=os.open('/dev/vfio/{number}', os.O_RDWR); "
                               "print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BusyError) as ei:
            Group(number, backend=get_backend("real"))
        assert f"pid {holder.pid}" in ei.value.hint, ei.value.hint
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()
    Group(number, backend=get_backend("real")).close()  # free again once the holder is gone


@pytest.mark.guest(variants=["virtio"])
def test_set_iommu_eperm_without_interrupt_remapping(guest_info, no_fd_leak):
    """virtio-iommu has no interrupt remapping: with allow_unsafe_interrupts=N, VFIO_SET_IOMMU
    fails with EPERM and a hint naming interrupt remapping and allow_unsafe_interrupts; with Y
    it works. (The mock reproduces this in test_no_interrupt_remapping_eperm_then_allow_unsafe.)"""
    from pyvfio.errors import PermissionDeniedError
    from pyvfio.seam import get_backend
    from pyvfio.vfio import Container, Group

    edu = [d for d in guest_info["devices"] if d.get("name") == "edu" and d.get("bound")]
    assert edu, guest_info["devices"]
    be = get_backend("real")
    param = "/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"
    saved = open(param).read().strip()
    try:
        with open(param, "w") as f:
            f.write("N\n")
        with Container(backend=be) as c:
            c.attach(Group.from_bdf(edu[0]["bdf"], backend=be))
            with pytest.raises(PermissionDeniedError) as ei:
                c.set_iommu()
            hint = ei.value.hint or ""
            assert "interrupt remapping" in hint and "allow_unsafe_interrupts" in hint, hint
            assert c.iommu is None
            with open(param, "w") as f:
                f.write("Y\n")
            iommu = c.set_iommu()
            assert iommu.info().iova_pgsizes
    finally:
        with open(param, "w") as f:
            f.write(f"{saved}\n")
