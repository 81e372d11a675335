"""Issue 12, item 5: children inherit their parent's backend, a child of another backend is an
error that says so, and discovery follows the default backend (the world open_device opens)."""

from __future__ import annotations

import pytest

import pyvfio
from pyvfio import seam
from pyvfio.errors import ArgumentError
from pyvfio.seam.mock import MockBackend
from pyvfio.services.discovery import open_source
from pyvfio.vfio import Container, Group

BDF = "0000:00:03.0"


@pytest.fixture
def default_mock(monkeypatch):
    """PYVFIO_BACKEND=mock with a fresh process-wide mock singleton."""
    monkeypatch.setenv("PYVFIO_BACKEND", "mock")
    monkeypatch.setattr(seam, "_singletons", {})
    be = seam.get_backend()
    assert isinstance(be, MockBackend)
    return be


def test_attach_by_bdf_or_number_inherits_the_container_backend() -> None:
    be = MockBackend()
    with Container(backend=be) as c:
        g = c.attach(BDF)
        assert g.backend is be and g.number == 3 and c.groups == [g]
        assert c.set_iommu("type1v2").backend is be
        dev = g.open_device(BDF)
        assert dev.backend is be
    with Container(backend=be) as c:
        assert c.attach(3).backend is be


def test_attach_of_a_group_from_another_backend_says_so() -> None:
    a, b = MockBackend(), MockBackend()
    with Container(backend=a) as c, Group.from_bdf(BDF, backend=b) as g:
        with pytest.raises(ArgumentError, match="opened on .* this container on .*backend=container.backend"):
            c.attach(g)
        assert c.groups == [] and g.container is None


def test_discovery_follows_the_default_backend(default_mock) -> None:
    src = open_source()
    assert src.sysfs_root == default_mock.sysfs_root  # not the host's /sys
    edu = [d for d in src.devices() if d.ids == "1234:11e8"]
    assert [d.bdf for d in edu] == [BDF]


def test_find_devices(default_mock) -> None:
    found = pyvfio.find_devices(ids="1234:11e8")
    assert [(d.bdf, d.ids, d.driver, d.group) for d in found] == [(BDF, "1234:11e8", "vfio-pci", 3)]
    assert pyvfio.find_devices(ids="1234:11E8", driver="vfio-pci") == found
    assert pyvfio.find_devices(ids="1234:*") == pyvfio.find_devices(ids="1234") != []
    assert pyvfio.find_devices(ids="1234:11e8", driver="e1000e") == []
    with pyvfio.open_device(found[0].bdf) as d:  # the same world open_device opens
        assert d.device.config.vendor_id == 0x1234
    with pytest.raises(ArgumentError, match="vvvv:dddd"):
        pyvfio.find_devices(ids="edu")


def test_find_devices_explicit_backend() -> None:
    be = MockBackend()
    assert [d.bdf for d in pyvfio.find_devices("1234:11e8", backend=be)] == [BDF]
