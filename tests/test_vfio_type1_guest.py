"""The container/group/type1 scenarios of tests/scenarios/type1.py against the real kernel,
inside the QEMU guests (intel and amd vIOMMUs; edu bound to vfio-pci by the test bed's agent).

The very same scenario functions run on the mock in tests/test_vfio_type1_mock.py: both must
give the same outcomes (errnos, sizes, DMA bytes, locked memory).
"""

from __future__ import annotations

import pytest
from scenarios import Env
from scenarios import type1 as sc

pytestmark = pytest.mark.guest(variants=["intel", "amd"])


@pytest.fixture
def env(guest_info, guest_variant) -> Env:
    from pyvfio.seam import get_backend

    edu = [d for d in guest_info["devices"] if d.get("name") == "edu" and d.get("bound")]
    if not edu:
        pytest.fail(f"the guest agent did not bind edu to vfio-pci: {guest_info['devices']}", pytrace=False)
    return Env("real", lambda: get_backend("real"), bdf=edu[0]["bdf"],
               facts={"variant": guest_variant, "guest": guest_info})


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
