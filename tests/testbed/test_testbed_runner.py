"""Host-side tests of the guest runner (vm/guest.py): each boots a real QEMU guest.

Exit codes come back as they are, the job runs in the host's directory with the host's
environment over a read-only host root, and a killed QEMU, a hanging job or a kernel panic are
failures that carry the console tail.  Skipped (or failed, under PYVFIO_REQUIRE_GUEST=1) where
no guest can start.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from vm.guest import EXIT_FAILURE, EXIT_TIMEOUT, GuestRun, qemu_command, run
from vm.kernel import Kernel

pytestmark = pytest.mark.usefixtures("guest_available")


def test_exit_code_cwd_env_and_read_only_host_root(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    results = tmp_path / "results"
    (work / "job.sh").write_text(
        'echo "$(pwd) $(id -u) $PYVFIO_TEST_TOKEN $PYVFIO_GUEST $PYVFIO_IN_GUEST" > "$1/seen"\n'
        "echo guest > written-in-guest\n"
        'test -s written-in-guest && echo "$?" >> "$1/seen"\n'
        "exit 7\n")
    env = dict(os.environ, PYVFIO_TEST_TOKEN="tok-123")
    res = run(["sh", "job.sh", str(results)], iommu="intel", timeout=180, cwd=work, env=env,
              results_dir=results, stream=False)
    assert res.status == "ok", res.describe()
    assert res.exit_code == 7 and not res.ok and res.host_exit_code() == 7
    lines = (results / "seen").read_text().split("\n")
    assert lines[0] == f"{work} 0 tok-123 intel 1"
    assert lines[1] == "0"  # the job could write in its directory (overlay) ...
    assert not (work / "written-in-guest").exists()  # ... but the host root stayed untouched
    assert res.guest_info["variant"] == "intel"
    # edu was bound to vfio-pci for the job and handed back (it has no host driver) afterwards
    (edu,) = [d for d in res.guest_info["devices"] if d["name"] == "edu"]
    assert edu["bound"] and edu["driver"] == "vfio-pci"
    assert res.restore == [{"bdf": edu["bdf"], "name": "edu", "driver": None, "ok": True}]
    assert (results / "console.log").read_text().count("pyvfio-guest: job exited 7") == 1


def test_hanging_job_times_out_with_console_tail(tmp_path):
    res = run(["sh", "-c", "echo hanging-now; sleep 600"], iommu="none", timeout=35,
              results_dir=tmp_path, stream=False)
    assert res.status == "timeout", res.describe()
    assert res.exit_code is None and res.host_exit_code() == EXIT_TIMEOUT
    assert "hanging-now" in res.console_tail  # the job had started: the time-out hit the job
    assert res.duration < 35 + 15
    assert "timed out" in res.describe() and "hanging-now" in res.describe()


def test_qemu_killed_mid_run_fails_with_console_tail(tmp_path):
    g = GuestRun(["sh", "-c", "echo job-started; sleep 600"], iommu="none", timeout=150,
                 results_dir=tmp_path, stream=False)
    started = threading.Event()
    g.on_line(lambda line: started.set() if "job-started" in line else None)
    g.start()
    try:
        assert started.wait(140), "the job never started"
        os.kill(g.pid, signal.SIGKILL)
        res = g.wait()
    finally:
        g.kill()
    assert res.status == "qemu-died", res.describe()
    assert res.qemu_returncode == -signal.SIGKILL
    assert res.exit_code is None and res.host_exit_code() == EXIT_FAILURE
    assert "job-started" in res.console_tail
    assert res.duration < 150


def test_kernel_panic_is_a_failure(tmp_path):
    res = run(["sh", "-c", "echo c > /proc/sysrq-trigger; sleep 600"], iommu="none", timeout=150,
              results_dir=tmp_path, stream=False)
    assert res.status == "panic", res.describe()
    assert res.exit_code is None and "Kernel panic" in res.console_tail
    assert res.duration < 150


def test_qemu_command_refuses_unknown_variant_and_device(tmp_path):
    k = Kernel("amd64", "x", tmp_path, tmp_path / "vmlinuz", tmp_path / "nomods", None)
    with pytest.raises(ValueError, match="iommu must be one of"):
        qemu_command(k, tmp_path / "initrd", tmp_path, iommu="arm-smmu", devices=["edu"],
                     python="python3")
    with pytest.raises(ValueError, match="unknown device"):
        qemu_command(k, tmp_path / "initrd", tmp_path, iommu="intel", devices=["floppy"],
                     python="python3")
    with pytest.raises(ValueError, match="cannot bind"):
        GuestRun(["true"], devices=["edu"], bind=["nvme"], results_dir=tmp_path)
    cmd = qemu_command(k, tmp_path / "initrd", tmp_path, iommu="virtio", devices=["edu", "nvme"],
                       python="python3")
    assert "virtio-iommu-pci,aw-bits=64" in cmd and "edu,dma_mask=0xffffffffffffffff" in cmd
    assert any(a.startswith("nvme,") for a in cmd)
