"""The dirty-tracking scenarios of tests/scenarios/dirty.py against the real kernel, inside the
QEMU guests (intel and amd vIOMMUs; edu bound to vfio-pci by the test bed's agent).

There the expectations are the real type1's: with a plain vfio-pci device every page of every
mapping is reported dirty at each report (the kernel cannot see device writes), holes stay as
they were, and edu has no DMA logging (ENOTTY). tests/test_dirty_mock.py runs the same
functions on the mock with its exact semantics and with the real kernel's.
"""

from __future__ import annotations

import pytest
from scenarios import Env, guest_env
from scenarios import dirty as sc

pytestmark = pytest.mark.guest(variants=["intel", "amd"])


@pytest.fixture
def env(guest_info, guest_variant) -> Env:
    return guest_env(guest_info, guest_variant)


@pytest.mark.parametrize("scenario", sc.ALL, ids=lambda f: f.__name__.removeprefix("scenario_"))
def test_scenario(scenario, env, no_fd_leak):
    scenario(env)


def test_cli_dirty_watch_reports_every_mapped_page(env, no_fd_leak):
    """``pyvfio --json dirty watch`` on the real kernel: edu writes 2 pages per interval, yet each
    report holds every mapped page (the real type1 without a vendor driver cannot see device
    writes, so it reports all pinned pages dirty)."""
    import json

    from click.testing import CliRunner

    from pyvfio.cli import cli

    res = CliRunner().invoke(cli, ["--json", "dirty", "watch", env.bdf, "--seconds", "1.5", "--interval",
                                   "0.5", "--size", "64K", "--edu-writes", "2"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["mapped_pages"] == 16 and doc["samples"]
    assert all(s["dirty_pages"] == 16 for s in doc["samples"]), doc["samples"]
