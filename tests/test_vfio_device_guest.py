"""The device-layer scenarios of tests/scenarios/device.py against the real kernel, inside the
QEMU guests (intel and amd vIOMMUs; edu and the e1000e bound to vfio-pci by the test bed's agent).

The very same scenario functions run on the mock in tests/test_vfio_device_mock.py: both must
give the same outcomes (flags, sizes, errnos, interrupts on eventfds, config space).
"""

from __future__ import annotations

import pytest
from scenarios import Env
from scenarios import device as sc

pytestmark = pytest.mark.guest(variants=["intel", "amd"], bind=["edu", "e1000e"])


@pytest.fixture
def env(guest_info, guest_variant) -> Env:
    from pyvfio.seam import get_backend

    bound = [d for d in guest_info["devices"] if d.get("bound") and d.get("driver") == "vfio-pci"]
    names = {d["name"] for d in bound}
    if not {"edu", "e1000e"} <= names:
        pytest.fail(f"the guest agent did not bind edu and e1000e to vfio-pci: {guest_info['devices']}",
                    pytrace=False)
    edu = next(d for d in bound if d["name"] == "edu")
    return Env("real", lambda: get_backend("real"), bdf=edu["bdf"],
               facts={"variant": guest_variant, "guest": guest_info,
                      "devices": [{"name": d["name"], "bdf": d["bdf"]} for d in bound]})


@pytest.mark.parametrize("scenario", sc.ALL, ids=lambda f: f.__name__.removeprefix("scenario_"))
def test_scenario(scenario, env, no_fd_leak):
    scenario(env)


def test_edu_registers_through_mmap(env, no_fd_leak):
    """Real kernel only (the mock cannot trap stores to a mapping): edu's registers through a
    BAR0 mapping behave as through pread/pwrite — liveness inverse, factorial, ident."""
    from pyvfio.vfio import open_device
    from pyvfio.vfio.edu import EduDevice

    with open_device(env.bdf) as od:
        with EduDevice(od.device, use_mmap=True) as edu:
            assert edu.ident == 0x010000ED
            assert edu.liveness(0x13572468) and edu.liveness(0)
            assert edu.factorial(10) == 3628800
            assert od.device.read_u32(0, 0x04) == ~0 & 0xFFFFFFFF  # pread sees the mmap store's effect
        assert od.device.mappings == ()
