"""Shared test configuration.

Real-kernel policy: tests marked ``kvm`` need /dev/kvm on the host; tests marked ``guest`` run in
QEMU guests through vm/pytest_plugin.py. Where the machine cannot provide them they skip with the
reason printed, unless PYVFIO_REQUIRE_KVM / PYVFIO_REQUIRE_GUEST is 1 (``tools/dev test`` and CI),
where a missing real kernel is a failure.

The backend matrix: a test written once takes the ``env`` fixture (a :class:`scenarios.Env`) and
names where it runs with ``@pytest.mark.backends(...)``::

    @pytest.mark.backends("mock", "intel", "amd")               # mock kernel + two guest variants
    @pytest.mark.backends("mock", "intel", iommufd=True)        # guest kwargs: bind=, iommufd=
    @pytest.mark.backends("mock-exact", "mock-pinned", "intel") # mock flavours (``mock_env`` reads them)
    pytestmark = pytest.mark.backends("mock", "kvm")            # mock kernel + the host's /dev/kvm

Each name becomes one parameter, first in the test id (``test_scenario[mock-edu_round_trip]``,
``test_scenario[intel-edu_round_trip]``):

* ``mock`` and ``mock-<flavour>``: ``env`` is the ``mock_env`` fixture (default: conftest's ``be``);
* ``kvm``: the real backend on the host, marked ``kvm`` (``env`` is ``kvm_env``);
* ``power``: marked ``power_guest``, run in the POWER guest (the test module gives ``env``);
* a guest variant (intel, amd, virtio, none): marked ``guest(variants=[v], **kwargs)`` with
  ``guest_variant=v``, so vm/pytest_plugin.py proxies it into that guest, where the same node id
  runs for real with ``env`` = ``guest_env``.

A test module overrides ``mock_env`` / ``guest_env`` (or ``env`` itself) where its machine needs more
than the defaults. Only tests that use ``env`` or ``backend_name`` are parametrized, so a module
level mark leaves the module's other tests alone.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import scenarios
from scenarios import Env

from pyvfio.seam import get_backend

# The QEMU guest test bed: @pytest.mark.guest tests are proxied into guests (vm/pytest_plugin.py).
pytest_plugins = ["vm.pytest_plugin"]


def _kvm_unavailable() -> str | None:
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm on this machine"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not readable and writable by this user"
    return None


def _guest_variants(config: pytest.Config) -> tuple[str, ...]:
    """The guest test bed's IOMMU variants (vm/pytest_plugin.py, loaded as a plugin here)."""
    return config.pluginmanager.get_plugin("vm.pytest_plugin").ALL_VARIANTS


def _backend_params(name: str, guest_kwargs: dict[str, Any], config: pytest.Config) -> list[Any]:
    plugin = config.pluginmanager.get_plugin("vm.pytest_plugin")
    if name in plugin.ALL_VARIANTS:
        kw = dict(guest_kwargs)
        kernels = plugin._marker_kernels(pytest.mark.guest(**kw).mark)
        kw.pop("iommufd", None)
        kw.pop("kernels", None)
        return [pytest.param(name, name, id=plugin.guest_id(name, k),
                             marks=pytest.mark.guest(variants=[name], kernels=[k], **kw))
                for k in kernels]
    if name == "kvm":
        return [pytest.param(name, None, id=name, marks=pytest.mark.kvm)]
    if name == "power":
        return [pytest.param(name, None, id=name, marks=pytest.mark.power_guest)]
    if name == "mock" or name.startswith("mock-"):
        return [pytest.param(name, None, id=name)]
    raise pytest.UsageError(f"pytest.mark.backends: unknown backend {name!r}; known mock, mock-<flavour>, "
                            f"kvm, power, {', '.join(variants)}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is None or not {"env", "backend_name"} & set(metafunc.fixturenames):
        return
    if not marker.args:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: pytest.mark.backends needs backend names")
    if "guest_variant" not in metafunc.fixturenames:
        metafunc.fixturenames.append("guest_variant")
    metafunc.parametrize(["backend_name", "guest_variant"],
                         [p for name in marker.args
                          for p in _backend_params(name, dict(marker.kwargs), metafunc.config)])


@pytest.fixture
def switchy():
    """A tiny thread switch interval for the test, so that races show."""
    import sys

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


@pytest.fixture
def mock_env(be) -> Env:
    """``env`` on a ``mock`` backend: conftest's mock kernel (``be``)."""
    return Env("mock", lambda: be)


@pytest.fixture
def backend_name(request: pytest.FixtureRequest) -> str:
    """The backend a test of the matrix runs on: its ``@pytest.mark.backends`` parameter. (This
    fixture itself runs only for a test that uses ``env`` without the mark.)"""
    pytest.fail(f"{request.node.nodeid} uses env or backend_name but has no @pytest.mark.backends(...)",
                pytrace=False)


@pytest.fixture
def kvm_env() -> Env:
    """``env`` on the ``kvm`` backend: the real kernel of this host."""
    return Env("real", lambda: get_backend("real"))


@pytest.fixture
def guest_env(request: pytest.FixtureRequest, guest_info, guest_variant) -> Env:
    """``env`` on a guest variant: the real kernel of the guest and the edu the agent bound."""
    marker = request.node.get_closest_marker("guest")
    iommufd = marker is not None and "built" in request.config.pluginmanager.get_plugin(
        "vm.pytest_plugin")._marker_kernels(marker)
    return scenarios.guest_env(guest_info, guest_variant, iommufd=iommufd)


@pytest.fixture
def env(request: pytest.FixtureRequest, backend_name: str) -> Env:
    """Where a test of the backend matrix runs (``@pytest.mark.backends``)."""
    if backend_name == "mock" or backend_name.startswith("mock-"):
        return request.getfixturevalue("mock_env")
    if backend_name == "kvm":
        return request.getfixturevalue("kvm_env")
    if backend_name in _guest_variants(request.config):
        return request.getfixturevalue("guest_env")
    pytest.fail(f"{request.node.nodeid}: no env for backend {backend_name!r} (the test module must "
                "give its own env fixture)", pytrace=False)


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
    from vm.qemu import runner_fds

    before = open_fds()
    yield
    for _ in range(20):
        # the listdir fd itself is gone by now; guests running in the background (vm/qemu.py)
        # hold their own fds, and a QEMU being spawned holds a pipe for a moment: anything else
        # is a leak
        leaked = {fd for fd in open_fds() - before - runner_fds()
                  if os.path.exists(f"/proc/self/fd/{fd}")}
        if not leaked:
            break
        time.sleep(0.05)
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
