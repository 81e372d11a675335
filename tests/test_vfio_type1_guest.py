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
