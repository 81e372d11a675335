"""The POWER (pseries) test bed, vm/power/: its archive writer and pins on the host, and real boots
that prove the exit code, the results folder and failures come back. The tests that run inside
the POWER guest (tests/testbed/test_power_bed_guest.py, the ``[power]`` items of tests/spapr/test_spapr.py) are
marked ``power_guest`` and proxied there by vm/pytest_plugin.py in one boot.

Real boots skip where no POWER guest can start, and fail under PYVFIO_REQUIRE_GUEST=1 (CI).
"""

from __future__ import annotations

import importlib.util
import marshal
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vm.initramfs import CpioWriter
from vm.power import fetch, initramfs, pins, runner

REPO = Path(__file__).resolve().parents[2]


# --- host-only: the cpio writer, payload bytecode, pins -------------------------------------


def _extract(archive: bytes, dest: Path) -> None:
    """Unpack with the host's GNU cpio: an independent reader of the newc format."""
    dest.mkdir()
    r = subprocess.run(["cpio", "-id", "--quiet", "--no-absolute-filenames"], input=archive,
                       cwd=dest, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert r.returncode == 0, r.stderr.decode()


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
def test_cpio_writer_round_trips_through_gnu_cpio(tmp_path):
    import io

    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.file("a/b/c.txt", b"hello\n", 0o640)
    w.file("a/odd", b"x" * 5, 0o755)  # a size that needs padding
    w.symlink("a/link", "b/c.txt")
    w.dir("empty", 0o700)
    w.trailer()
    data = buf.getvalue()
    assert len(data) % 512 == 0
    _extract(data, tmp_path / "x")
    root = tmp_path / "x"
    assert (root / "a/b/c.txt").read_bytes() == b"hello\n"
    assert (root / "a/b/c.txt").stat().st_mode & 0o777 == 0o640
    assert (root / "a/odd").read_bytes() == b"xxxxx"
    assert os.access(root / "a/odd", os.X_OK)
    assert os.readlink(root / "a/link") == "b/c.txt"
    assert (root / "a/link").read_bytes() == b"hello\n"
    assert (root / "empty").is_dir()


def test_cpio_writer_refuses_a_path_through_an_archived_symlink():
    """The kernel would replace the symlink /lib -> usr/lib with a directory (broken merged-/usr)."""
    import io

    w = CpioWriter(io.BytesIO())
    w.symlink("lib", "usr/lib")
    with pytest.raises(ValueError, match="symlink"):
        w.file("lib/modules/x.ko", b"")


@pytest.mark.skipif(sys.implementation.cache_tag != "cpython-311", reason="needs CPython 3.11")
def test_payload_has_unchecked_hash_pyc_named_for_the_guest(tmp_path):
    (tmp_path / "pyvfio").mkdir()
    (tmp_path / "pyvfio" / "m.py").write_text("X = 41 + 1\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "bad.py").write_text("def (:\n")  # a syntax error: shipped without pyc
    job = {"argv": ["true"]}
    _extract(initramfs.payload_archive(tmp_path, "true", job), tmp_path / "out")
    src = tmp_path / "out" / "src"
    assert (src / "pyvfio/m.py").read_text() == "X = 41 + 1\n"
    pyc = (src / "pyvfio/__pycache__/m.cpython-311.pyc").read_bytes()
    assert pyc[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(pyc[4:8], "little") == 0b01  # hash-based, not checked against source
    code = marshal.loads(pyc[16:])
    assert code.co_filename == "/src/pyvfio/m.py"
    ns: dict = {}
    exec(code, ns)
    assert ns["X"] == 42
    assert not (src / "tests/__pycache__").exists()
    assert (tmp_path / "out/run/pyvfio/cmd").read_text() == "true\n"


def test_module_depends_parses_modinfo():
    blob = b"\x7fELF...\0license=GPL\0depends=vfio-pci-core,vfio\0name=vfio_pci\0"
    assert fetch.module_depends(blob) == ["vfio-pci-core", "vfio"]
    assert fetch.module_depends(b"\0depends=\0") == []
    assert fetch.module_depends(b"nothing") == []


def test_pins_digest_tracks_the_kernel_pin():
    assert pins.KERNEL.arch == "ppc64el" and pins.KERNEL.release.endswith("-powerpc64le")
    assert pins.cache_dir().name == f"{pins.KERNEL.release}-{pins.pins_digest()}"
    assert str(pins.cache_dir()).startswith(str(pins.cache_root()))
    assert not str(pins.cache_root()).startswith(str(REPO))


def test_vm_power_is_an_alias_of_vm_power_subcommand():
    """``python -m vm.power ARGS`` runs ``python -m vm power ARGS``."""
    outs = [subprocess.run([sys.executable, "-m", *mod, "status"], cwd=REPO, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for mod in (["vm.power"], ["vm", "power"])]
    assert outs[0].returncode == outs[1].returncode
    assert outs[0].stdout == outs[1].stdout and "power guest: " in outs[0].stdout


def test_qemu_command_is_the_recipe_machine(tmp_path):
    cmd = runner.qemu_command(tmp_path / "vmlinux", tmp_path / "initrd")
    line = " ".join(cmd)
    assert cmd[0] == "qemu-system-ppc64"
    assert "pseries,x-vof=on" in line and "-cpu power9" in line
    assert "edu,dma_mask=0xffffffffffffffff" in line
    assert "console=hvc0" in line and "panic=-1" in line and "-no-reboot" in line


# --- real boots ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def power_guest():
    why = runner.unavailable_reason()
    if why:
        msg = f"no POWER guest here: {why}"
        if os.environ.get("PYVFIO_REQUIRE_GUEST") == "1":
            pytest.fail(f"PYVFIO_REQUIRE_GUEST=1 but {msg}", pytrace=False)
        pytest.skip(msg)


@pytest.mark.power
def test_failing_command_exit_code_and_results_come_back(power_guest, tmp_path):
    """Through the CLI: the job's exit code is the CLI's, files in $PYVFIO_RESULTS come back."""
    r = subprocess.run(
        [sys.executable, "-m", "vm", "power", "run", "--quiet", "--timeout", "120",
         "--results-dir", str(tmp_path), "--", "sh", "-c",
         'uname -m > "$PYVFIO_RESULTS/uname"; echo "$PYVFIO_GUEST" > "$PYVFIO_RESULTS/variant"; '
         "exit 7"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 7, r.stderr
    assert (tmp_path / "uname").read_text() == "ppc64le\n"
    assert (tmp_path / "variant").read_text() == "power\n"
    assert (tmp_path / "exit_code").read_text() == "7\n"
    assert "exited 7" in r.stderr


@pytest.mark.power
def test_timeout_is_a_failure_with_the_console_tail(power_guest, tmp_path):
    res = runner.run(["sleep", "600"], timeout=2, results_dir=tmp_path, stream=False)
    assert res.status == "timeout" and res.exit_code is None
    assert res.host_exit_code() == runner.EXIT_TIMEOUT
    assert not res.ok
    assert (tmp_path / "console.log").exists()


@pytest.mark.power
def test_qemu_dying_is_a_failure(power_guest, tmp_path):
    run = runner.PowerRun(["true"], timeout=120, results_dir=tmp_path, stream=False)
    run.on_line(lambda line: run.kill())  # QEMU dies at its first console line
    res = run.run()
    assert res.status == "qemu-died" and res.exit_code is None
    assert res.qemu_returncode not in (None, 0)
    assert res.host_exit_code() == runner.EXIT_FAILURE
    assert res.console_tail  # the line it printed is reported
