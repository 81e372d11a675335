"""Host-side rules of vm/pytest_plugin.py, without booting a guest.

A guest test's host twin must never pass silently: a failed guest run, a test the guest did not
report, or no guest at all under PYVFIO_REQUIRE_GUEST=1 are failures; without the requirement
a missing guest is a skip naming tools/dev setup.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from _pytest.outcomes import Skipped

from vm.pytest_plugin import GuestTestFailure, _GuestSession, _HostController

ROOT = Path(__file__).resolve().parents[2]
KEY = ("intel", "stable", ("edu",))


def _controller(session: _GuestSession | None, unavailable: str | None = None) -> _HostController:
    c = _HostController(config=SimpleNamespace())  # type: ignore[arg-type]
    c._unavailable = unavailable
    if session is not None:
        c.sessions[KEY] = session
    return c


def _twin(nodeid: str = "tests/t.py::test_x[intel]"):
    return SimpleNamespace(nodeid=nodeid, variant="intel", kernel="stable", bind=("edu",),
                           key=KEY, session=None)


def _report(**tests):
    return {"exitstatus": 1, "tests": {f"tests/t.py::{k}[intel]": v for k, v in tests.items()}}


def test_guest_pass_passes():
    c = _controller(_GuestSession(result=SimpleNamespace(console_tail=""),
                                  report=_report(test_x={"outcome": "passed", "text": ""})))
    assert c.report(_twin()) is None


def test_guest_failure_text_is_the_host_failure():
    c = _controller(_GuestSession(result=SimpleNamespace(console_tail=""), report=_report(
        test_x={"outcome": "failed", "text": "[call] E   assert 2 == 3"})))
    with pytest.raises(GuestTestFailure, match=r"in the intel guest, failed:\n\[call\] E   assert 2 == 3"):
        c.report(_twin())


def test_guest_skip_is_a_host_skip_with_the_reason():
    c = _controller(_GuestSession(result=SimpleNamespace(console_tail=""), report=_report(
        test_x={"outcome": "skipped", "text": "Skipped: no widget"})))
    with pytest.raises(Skipped, match="in the intel guest: no widget"):
        c.report(_twin())


def test_unreported_test_fails_with_console_tail():
    c = _controller(_GuestSession(result=SimpleNamespace(console_tail="last words"),
                                  report=_report(test_other={"outcome": "passed", "text": ""})))
    with pytest.raises(GuestTestFailure, match=r"(?s)did not report tests/t.py::test_x\[intel\].*last words"):
        c.report(_twin())


def test_failed_guest_run_fails_even_a_test_that_passed_before():
    c = _controller(_GuestSession(report=_report(test_x={"outcome": "passed", "text": ""}),
                                  error="guest run failed: timed out after 900 s"))
    with pytest.raises(GuestTestFailure, match="timed out.*passed before that"):
        c.report(_twin())


def test_no_guest_skips_or_fails_when_required(monkeypatch):
    c = _controller(None, unavailable="qemu-system-x86_64 is not installed: run tools/dev setup")
    monkeypatch.delenv("PYVFIO_REQUIRE_GUEST", raising=False)
    with pytest.raises(Skipped, match="no QEMU guest here: qemu-system-x86_64 is not installed: run tools/dev setup"):
        c.report(_twin())
    monkeypatch.setenv("PYVFIO_REQUIRE_GUEST", "1")
    with pytest.raises(GuestTestFailure, match="PYVFIO_REQUIRE_GUEST=1 but no QEMU guest here"):
        c.report(_twin())
    assert not c.sessions  # nothing was booted


@pytest.mark.parametrize("require", ["0", "1"])
def test_end_to_end_ids_and_missing_guest(tmp_path, require):
    """A real pytest run on the host with no kernel cached: ids per variant, skip or fail."""
    (tmp_path / "test_g.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.guest
        def test_default(guest_variant):
            raise AssertionError("the body must not run on the host")

        @pytest.mark.guest(variants=["none"])
        def test_none_only():
            raise AssertionError("the body must not run on the host")

        def test_plain():
            pass
    """))
    env = dict(os.environ, PYVFIO_CACHE=str(tmp_path / "empty-cache"), PYVFIO_REQUIRE_GUEST=require,
               PYTHONPATH=str(ROOT))
    env.pop("PYVFIO_IN_GUEST", None)
    env.pop("PYVFIO_GUEST_VARIANTS", None)
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "vm.pytest_plugin", "-p",
                        "no:cacheprovider", "-v", "-rs", "test_g.py"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    out = r.stdout
    for node in ("test_default[intel]", "test_default[amd]", "test_default[virtio]",
                 "test_default[intel@newest]", "test_default[amd@newest]",
                 "test_default[virtio@newest]", "test_none_only[none]",
                 "test_none_only[none@newest]"):
        assert f"test_g.py::{node} " + ("SKIPPED" if require == "0" else "FAILED") in out, out
    assert "test_g.py::test_plain PASSED" in out
    assert "must not run on the host" not in out
    if require == "0":
        assert r.returncode == 0, out
        assert "the guest kernel is not cached: run tools/dev setup" in out
    else:
        assert r.returncode == 1, out
        assert "PYVFIO_REQUIRE_GUEST=1 but no QEMU guest here" in out


def test_guest_environment_is_taken_at_start_without_the_backend_choice(monkeypatch):
    """Guests start in background threads while host tests run: a variable a host test sets
    later (a doctest's PYVFIO_BACKEND=mock) must not reach them, nor the host's backend choice."""
    monkeypatch.setenv("PYVFIO_BACKEND", "mock")
    monkeypatch.setenv("PYVFIO_PLUGIN_PROBE", "before")
    c = _controller(None)
    monkeypatch.setenv("PYVFIO_PLUGIN_PROBE", "after")
    assert "PYVFIO_BACKEND" not in c.environ
    assert c.environ["PYVFIO_PLUGIN_PROBE"] == "before"
