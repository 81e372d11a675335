"""Shared test configuration.

Real-kernel policy: tests marked ``kvm`` need /dev/kvm on the host; tests marked ``guest`` run in
QEMU guests through vm/pytest_plugin.py. Where the machine cannot provide them they skip with the
reason printed, unless PYVFIO_REQUIRE_KVM / PYVFIO_REQUIRE_GUEST is 1 (``tools/dev test`` and CI),
where a missing real kernel is a failure.
"""

from __future__ import annotations

import os

import pytest

# The QEMU guest test bed: @pytest.mark.guest tests are proxied into guests (vm/pytest_plugin.py).
pytest_plugins = ["vm.pytest_plugin"]


def _kvm_unavailable() -> str | None:
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm on this machine"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not readable and writable by this user"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    why = _kvm_unavailable()
    if why is None:
        return
    require = os.environ.get("PYVFIO_REQUIRE_KVM") == "1"
    for item in items:
        if item.get_closest_marker("kvm") is None:
            continue
        if require:
            item.user_properties.append(("kvm_required_but_missing", why))
        else:
            item.add_marker(pytest.mark.skip(reason=f"real-kernel KVM test skipped: {why}"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    for name, why in item.user_properties:
        if name == "kvm_required_but_missing":
            pytest.fail(f"PYVFIO_REQUIRE_KVM=1 but {why}", pytrace=False)


def pytest_report_header(config: pytest.Config) -> list[str]:
    why = _kvm_unavailable()
    return [f"pyvfio: /dev/kvm {'usable' if why is None else 'UNUSABLE: ' + why}"]


def open_fds() -> set[int]:
    return {int(x) for x in os.listdir("/proc/self/fd")}


@pytest.fixture
def no_fd_leak():
    """Fail the test if it leaves file descriptors open."""
    before = open_fds()
    yield
    leaked = open_fds() - before
    # the listdir fd itself is gone by now; anything else is a leak
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, "leaked fds: " + ", ".join(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}" for fd in leaked)


@pytest.fixture
def mock_backend():
    """A fresh mock kernel for one test."""
    from pyvfio.seam.mock import MockBackend

    return MockBackend()


@pytest.fixture
def be():
    """A mock kernel created before the fd-leak check starts (its simulated devices hold BAR
    memfds for the machine's lifetime) and powered off afterwards."""
    from pyvfio.seam.mock import MockBackend
    from pyvfio.testing import machine

    backend = MockBackend()
    yield backend
    machine(backend).shutdown()
