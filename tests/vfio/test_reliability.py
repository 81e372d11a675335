"""Unwinding on the VFIO objects when a syscall fails (issue 21, item 6), on the mock."""

from __future__ import annotations

import errno

import pytest

from pyvfio.errors import ArgumentError, BusyError
from pyvfio.testing import FaultyBackend
from pyvfio.vfio import Container, Group


def test_attach_closes_the_group_when_set_container_fails(be):
    faulty = FaultyBackend(be)
    with Container(backend=faulty) as c:
        g = Group(3, backend=faulty)
        faulty.fail("ioctl", "VFIO_GROUP_SET_CONTAINER", errno.EBUSY)
        with pytest.raises(BusyError):
            c.attach(g)
        assert g.closed and c.groups == []
        g2 = c.attach(Group(3, backend=faulty))  # the group file opens again: no EBUSY
        assert c.groups == [g2]


def test_attach_refuses_a_non_group(be):
    # a group number (3) or a BDF string opens the group (branch api); what is neither is refused
    with Container(backend=be) as c:
        for bad in (None, 3.0, True, b"3", object(), "3"):
            with pytest.raises(ArgumentError):
                c.attach(bad)  # type: ignore[arg-type]
        assert c.groups == []
