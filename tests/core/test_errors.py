"""The error model: typed subclasses, builtin compatibility, hints, pickling."""

from __future__ import annotations

import errno
import pickle

import pytest

from pyvfio import errors


@pytest.mark.parametrize(
    "err, cls, builtin",
    [
        (errno.EPERM, errors.PermissionDeniedError, PermissionError),
        (errno.EACCES, errors.PermissionDeniedError, PermissionError),
        (errno.ENOENT, errors.NotFoundError, FileNotFoundError),
        (errno.EEXIST, errors.ExistsError, FileExistsError),
        (errno.EINTR, errors.InterruptedError_, InterruptedError),
        (errno.EBUSY, errors.BusyError, OSError),
        (errno.ENOTTY, errors.UnsupportedError, OSError),
    ],
)
def test_errno_maps_to_typed_and_builtin_classes(err, cls, builtin):
    e = errors.error_from_errno(err, op="VFIO_GROUP_SET_CONTAINER", path="/dev/vfio/3")
    assert type(e) is cls and isinstance(e, builtin) and isinstance(e, errors.PyvfioError)
    assert e.errno == err and e.op == "VFIO_GROUP_SET_CONTAINER" and e.path == "/dev/vfio/3"


def test_unknown_errno_still_pyvfio_error():
    e = errors.error_from_errno(errno.EXDEV, op="x")
    assert type(e) is errors.PyvfioError and e.errno == errno.EXDEV


def test_hint_registry_op_specific_beats_generic():
    errors.register_hint("TEST_OP_A", errno.ENOSPC, lambda e: f"limit on {e.path}")
    errors.register_hint(None, errno.ENOSPC, "generic")
    try:
        assert errors.error_from_errno(errno.ENOSPC, op="TEST_OP_A", path="p").hint == "limit on p"
        assert errors.error_from_errno(errno.ENOSPC, op="OTHER").hint == "generic"
        assert errors.error_from_errno(errno.ENOSPC, op="TEST_OP_A", hint="explicit").hint == "explicit"
    finally:
        errors._HINTS.pop(("TEST_OP_A", errno.ENOSPC))
        errors._HINTS.pop((None, errno.ENOSPC))


def test_str_and_dict_carry_everything():
    e = errors.error_from_errno(errno.ENOMEM, op="VFIO_IOMMU_MAP_DMA", path="/dev/vfio/vfio", hint="raise it")
    s = str(e)
    assert "VFIO_IOMMU_MAP_DMA" in s and "/dev/vfio/vfio" in s and "ENOMEM" in s and "raise it" in s
    d = e.to_dict()
    assert d["errno"] == errno.ENOMEM and d["errno_name"] == "ENOMEM" and d["op"] == "VFIO_IOMMU_MAP_DMA"


def test_pickle_roundtrip_keeps_type_and_fields():
    e = errors.error_from_errno(errno.EBUSY, op="open", path="/dev/vfio/5", hint="held by pid 1")
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is errors.BusyError and (e2.errno, e2.op, e2.path, e2.hint) == (e.errno, e.op, e.path, e.hint)


def test_from_oserror_keeps_errno():
    try:
        open("/nonexistent/x")
    except OSError as oe:
        e = errors.from_oserror(oe, op="open")
    assert isinstance(e, errors.NotFoundError) and e.path == "/nonexistent/x"


def test_argument_errors_are_valueerrors():
    for cls in (errors.AlignmentError, errors.RangeError, errors.OverlapError):
        assert issubclass(cls, errors.ArgumentError) and issubclass(cls, ValueError)
