"""Every CLI verb through click's CliRunner, on a fake host tree and on the mock backend."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

import pyvfio.cli as clim
from pyvfio.cli import cli
from pyvfio.testing import sample_host


@pytest.fixture
def host(tmp_path):
    return sample_host(str(tmp_path))


def invoke(args, host=None, input=None):
    runner = CliRunner()
    pre = ["--root", host.root] if host is not None else []
    return runner.invoke(cli, pre + args, input=input, catch_exceptions=False)


def jdoc(res):
    """The single JSON document on stdout (fails if there is anything else)."""
    return json.loads(res.stdout)


def driver(host, bdf):
    link = os.path.join(host.paths.sys, "bus/pci/devices", bdf, "driver")
    return os.path.basename(os.readlink(link)) if os.path.islink(link) else None


# -- ls ------------------------------------------------------------------------------------------
def test_ls_json(host):
    res = invoke(["--json", "ls"], host)
    assert res.exit_code == 0
    devs = {d["bdf"]: d for d in jdoc(res)["devices"]}
    assert len(devs) == 9
    assert devs["0000:00:03.0"]["ids"] == "1234:11e8" and devs["0000:00:03.0"]["vfio_usable"] is True
    assert devs["0000:00:02.0"]["driver"] == "e1000e" and devs["0000:00:02.0"]["vfio_usable"] is False
    assert devs["0000:02:00.0"]["numa_node"] == 1 and devs["0000:02:00.0"]["sriov_totalvfs"] == 7
    assert devs["0000:03:00.0"]["iommu_group"] is None


def test_ls_text_and_filters(host):
    res = invoke(["ls"], host)
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["BDF", "IDS", "CLASS", "DRIVER", "GROUP", "VFIO"]
    assert any(ln.startswith("0000:00:03.0") and ln.rstrip().endswith("yes") for ln in lines)
    res = invoke(["--json", "ls", "--vfio"], host)
    assert [d["bdf"] for d in jdoc(res)["devices"]] == ["0000:00:03.0"]
    res = invoke(["ls", "-l"], host)
    assert "VF of 0000:02:00.0" in res.stdout and "PF 1/7" in res.stdout


# -- group ---------------------------------------------------------------------------------------
def test_group_list_and_detail(host):
    res = invoke(["--json", "group"], host)
    groups = {g["group"]: g for g in jdoc(res)["groups"]}
    assert groups[4]["viable"] is False and {b["bdf"] for b in groups[4]["blockers"]} == {"0000:01:00.0", "0000:01:00.1"}
    assert groups[2]["viable"] is True
    res = invoke(["--json", "group", "2"], host)
    g = jdoc(res)["group"]
    assert res.exit_code == 0 and g["vfio_node_exists"] is True and g["holders"] == []
    host.hold_open(999, "qemu", "/dev/vfio/2")
    g = jdoc(invoke(["--json", "group", "2"], host))["group"]
    assert g["holders"] == [{"pid": 999, "comm": "qemu", "path": "/dev/vfio/2"}]
    res = invoke(["group", "4"], host)
    assert "BLOCKS" in res.stdout and "snd_hda_intel" in res.stdout


def test_group_not_found_is_exit_3_with_json_error(host):
    res = invoke(["--json", "group", "42"], host)
    assert res.exit_code == 3
    doc = jdoc(res)
    assert doc["errno"] == 2 and "42" in doc["error"] and doc["hint"]


# -- bind / unbind --------------------------------------------------------------------------------
def test_bind_without_yes_and_without_tty_refuses(host):
    res = invoke(["--json", "bind", "0000:02:10.0"], host)
    assert res.exit_code == 2 and "--yes" in jdoc(res)["error"]
    assert driver(host, "0000:02:10.0") is None


def test_bind_confirm_on_a_tty(host, monkeypatch):
    monkeypatch.setattr(clim, "_stdin_is_tty", lambda: True)
    res = invoke(["bind", "0000:02:10.0"], host, input="n\n")
    assert res.exit_code == 1 and driver(host, "0000:02:10.0") is None
    res = invoke(["bind", "0000:02:10.0"], host, input="y\n")
    assert res.exit_code == 0 and driver(host, "0000:02:10.0") == "vfio-pci"
    assert "Bind 0000:02:10.0" in res.stderr


def test_bind_round_trip_restores_the_driver(host):
    res = invoke(["--json", "bind", "--yes", "0000:02:00.0"], host)
    assert res.exit_code == 0, res.output
    doc = jdoc(res)
    assert doc["devices"][0]["driver_before"] == "igb" and doc["devices"][0]["driver_after"] == "vfio-pci"
    assert doc["vfio_node"] == "/dev/vfio/5" and doc["viable"] is True
    assert driver(host, "0000:02:00.0") == "vfio-pci"
    res = invoke(["--json", "bind", "--yes", "0000:02:00.0"], host)  # idempotent
    assert res.exit_code == 0 and "already bound to vfio-pci" in jdoc(res)["warnings"]
    res = invoke(["--json", "unbind", "--yes", "0000:02:00.0"], host)
    assert res.exit_code == 0
    assert jdoc(res)["devices"][0]["driver_after"] == "igb" and driver(host, "0000:02:00.0") == "igb"


def test_bind_already_bound_is_one_document_and_asks_nothing(host):
    """Nothing to change: exit 0 with one JSON document, even without --yes and without a TTY."""
    assert invoke(["--json", "bind", "--yes", "0000:02:00.0"], host).exit_code == 0
    res = invoke(["--json", "bind", "0000:02:00.0"], host)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)  # exactly one document: json.loads refuses trailing data
    assert "already bound to vfio-pci" in doc["warnings"] and driver(host, "0000:02:00.0") == "vfio-pci"


def test_bind_dry_run(host):
    res = invoke(["--json", "bind", "--dry-run", "0000:00:04.0"], host)
    doc = jdoc(res)
    assert res.exit_code == 0 and doc["dry_run"] is True and doc["uses"][0]["kind"] == "mount"
    assert [s["action"] for s in doc["steps"]] == ["unbind", "override", "probe", "wait-node"]
    assert driver(host, "0000:00:04.0") == "nvme"
    res = invoke(["bind", "-n", "0000:00:04.0"], host)
    assert "would nvme -> vfio-pci" in res.stdout


def test_bind_refuses_in_use_unless_forced(host):
    res = invoke(["--json", "bind", "--yes", "0000:00:02.0"], host)
    assert res.exit_code == 1
    doc = jdoc(res)
    assert doc["errno_name"] == "EBUSY" and doc["uses"][0]["what"] == "eth0 carries route 10.0.2.0/24"
    assert driver(host, "0000:00:02.0") == "e1000e"
    res = invoke(["--json", "bind", "--yes", "--force", "0000:00:02.0"], host)
    assert res.exit_code == 0 and driver(host, "0000:00:02.0") == "vfio-pci"


def test_bind_non_viable_names_sibling(host):
    res = invoke(["--json", "bind", "--yes", "0000:01:00.0"], host)
    assert res.exit_code == 1
    doc = jdoc(res)
    assert doc["viable"] is False and [b["bdf"] for b in doc["blockers"]] == ["0000:01:00.1"]
    assert "0000:01:00.1" in doc["error"] and "snd_hda_intel" in doc["error"]
    assert driver(host, "0000:01:00.0") == "nouveau"
    res = invoke(["--json", "bind", "--yes", "--partial", "0000:01:00.0"], host)
    assert res.exit_code == 0 and jdoc(res)["viable"] is False and jdoc(res)["blockers"][0]["bdf"] == "0000:01:00.1"
    res = invoke(["--json", "bind", "--yes", "--whole-group", "0000:01:00.0"], host)
    assert res.exit_code == 0 and jdoc(res)["viable"] is True
    assert driver(host, "0000:01:00.1") == "vfio-pci"
    res = invoke(["--json", "unbind", "--yes", "--whole-group", "0000:01:00.0"], host)
    assert res.exit_code == 0
    assert (driver(host, "0000:01:00.0"), driver(host, "0000:01:00.1")) == ("nouveau", "snd_hda_intel")


def test_unbind_refuses_while_group_is_held(host):
    host.hold_open(555, "qemu-system-x86", "/dev/vfio/2")
    res = invoke(["--json", "unbind", "--yes", "0000:00:03.0"], host)
    assert res.exit_code == 1 and "pid 555" in jdoc(res)["error"]
    assert driver(host, "0000:00:03.0") == "vfio-pci"
    res = invoke(["--json", "unbind", "--dry-run", "0000:00:03.0"], host)
    assert res.exit_code == 0 and jdoc(res)["uses"][0]["kind"] == "vfio-fd"


def test_unbind_without_tty_refuses(host):
    res = invoke(["unbind", "0000:00:03.0"], host)
    assert res.exit_code == 2 and "--yes" in res.stderr and driver(host, "0000:00:03.0") == "vfio-pci"


def test_bad_and_unknown_bdf(host):
    res = invoke(["--json", "bind", "--yes", "banana"], host)
    assert res.exit_code == 2 and "not a PCI address" in jdoc(res)["error"]
    res = invoke(["--json", "unbind", "--yes", "0000:0f:00.0"], host)
    assert res.exit_code == 3 and jdoc(res)["errno_name"] == "ENOENT"


def test_bind_probe_failure_exit_1_and_rollback(host):
    res = invoke(["--json", "bind", "--yes", "0000:03:00.0"], host)
    assert res.exit_code == 1 and jdoc(res)["op"] == "drivers_probe" and jdoc(res)["errno_name"] == "EINVAL"
    assert driver(host, "0000:03:00.0") == "virtio-pci"


def test_permission_denied_is_exit_4(host, monkeypatch):
    import errno

    from pyvfio.services import binding

    def denied(self, path, value, op):
        raise self.translate(PermissionError(errno.EACCES, "Permission denied", path), path, op)

    monkeypatch.setattr(binding.DriverCore, "_write", denied)
    res = invoke(["--json", "bind", "--yes", "0000:02:10.0"], host)
    assert res.exit_code == 4 and jdoc(res)["hint"] == "writing sysfs driver files needs root"


# -- doctor ---------------------------------------------------------------------------------------
def test_doctor_json_and_exit_codes(host):
    host.write("sys/bus/pci/devices/0000:00:03.0/reset_method", "bus\n")
    res = invoke(["--json", "doctor"], host)
    doc = jdoc(res)
    assert res.exit_code == 0 and doc["ok"] is True and doc["counts"]["fail"] == 0
    host.write("sys/module/vfio_iommu_type1/parameters/dma_entry_limit", "10\n")
    res = invoke(["--json", "doctor", "--mappings", "100"], host)
    doc = jdoc(res)
    assert res.exit_code == 1 and doc["ok"] is False
    bad = [c for c in doc["checks"] if c["status"] == "fail"]
    assert [c["check"] for c in bad] == ["dma-entry-limit"] and bad[0]["hint"]


def test_doctor_text_shows_hints(host):
    host.write("proc/self/limits", __import__("pyvfio.testing", fromlist=["x"]).limits_text(65536))
    res = invoke(["doctor", "--guest-memory", "2G", "--device", "0000:00:04.0"], host)
    assert res.exit_code == 1
    assert "FAIL    memlock" in res.stdout and "ulimit -l" in res.stdout
    assert "FAIL    device-use" in res.stdout and "failed" in res.stdout.splitlines()[-1]


def test_doctor_only_and_bad_options(host):
    res = invoke(["--json", "doctor", "--check", "kvm"], host)
    assert [c["check"] for c in jdoc(res)["checks"]] == ["kvm"]
    res = invoke(["--json", "doctor", "--check", "nonsense"], host)
    assert res.exit_code == 2 and "nonsense" in jdoc(res)["error"]
    res = invoke(["--json", "doctor", "--guest-memory", "many"], host)
    assert res.exit_code == 2
    res = invoke(["--json", "doctor", "--mappings", "0"], host)
    assert res.exit_code == 2 and json.loads(res.stdout)["error"]


# -- usage errors and the mock backend -------------------------------------------------------------
def test_usage_error_is_json_with_json():
    res = invoke(["--json", "frobnicate"])
    assert res.exit_code == 2 and "frobnicate" in jdoc(res)["error"]
    res = invoke(["frobnicate"])
    assert res.exit_code == 2 and res.stdout == ""


def test_mock_backend_every_verb():
    res = invoke(["--json", "--backend", "mock", "ls"])
    devs = {d["bdf"]: d for d in jdoc(res)["devices"]}
    assert devs["0000:00:03.0"]["driver"] == "vfio-pci" and devs["0000:00:03.0"]["vfio_usable"] is True
    assert devs["0000:00:02.0"]["driver"] == "e1000e"
    res = invoke(["--json", "--backend", "mock", "group", "3"])
    assert jdoc(res)["group"]["viable"] is True and jdoc(res)["group"]["vfio_node_exists"] is True
    res = invoke(["--json", "--backend", "mock", "bind", "--yes", "0000:00:02.0"])
    doc = jdoc(res)
    assert res.exit_code == 0 and doc["devices"][0]["driver_after"] == "vfio-pci" and doc["vfio_node"] == "/dev/vfio/2"
    res = invoke(["--json", "--backend", "mock", "unbind", "--yes", "0000:00:03.0", "--no-restore"])
    assert res.exit_code == 0 and jdoc(res)["devices"][0]["driver_after"] is None
    res = invoke(["--json", "--backend", "mock", "doctor"])
    doc = jdoc(res)
    status = {c["check"]: c["status"] for c in doc["checks"]}
    assert status["iommu"] == "ok" and status["group-viability"] == "ok" and status["dma-entry-limit"] == "ok"
    assert status["interrupt-remapping"] == "ok"


def test_info_on_the_mock_backend():
    res = invoke(["--json", "--backend", "mock", "info", "0000:00:03.0"])
    assert res.exit_code == 0, res.output
    doc = jdoc(res)
    assert doc["ids"] == "1234:11e8" and doc["vfio_usable"] is True and doc["group"]["group"] == 3
    v = doc["vfio"]
    regions = {r["name"]: r for r in v["regions"]}
    assert regions["BAR0"]["size"] > 0 and regions["BAR0"]["mappable"] and "CONFIG" in regions
    assert {q["name"] for q in v["irqs"]} >= {"INTX", "MSI"}
    assert v["container"]["api_version"] == 0 and v["container"]["extensions"]["TYPE1v2"] == 1
    assert v["iommu"]["iova_ranges"] and int(v["iommu"]["iova_pgsizes"], 16) & 0x1000
    res = invoke(["--backend", "mock", "info", "00:03.0"])
    assert res.exit_code == 0 and "BAR0" in res.stdout and "TYPE1v2" in res.stdout


def test_info_of_a_device_not_on_vfio_and_errors(host):
    res = invoke(["--json", "info", "0000:00:02.0"], host)
    doc = jdoc(res)
    assert res.exit_code == 0 and doc["vfio"] is None and "e1000e" in doc["vfio_reason"]
    assert invoke(["--json", "info", "0000:0e:00.0"], host).exit_code == 3
    assert invoke(["--json", "info", "x"], host).exit_code == 2


def test_info_reports_a_busy_group():
    from pyvfio.seam.mock import MockBackend

    be = MockBackend()
    held = be.open("/dev/vfio/3")  # another opener: the group is exclusive
    try:
        from pyvfio.cli import Env

        env = Env(True, "mock", clim.HostPaths(be.sysfs_root, "/proc", be.sysfs_root + "/.dev", be.sysfs_root + "/.s"),
                  _backend=be)
        runner = CliRunner()
        res = runner.invoke(clim.info_cmd, ["0000:00:03.0"], obj=env, catch_exceptions=False)
        assert res.exit_code == 1
        doc = json.loads(res.stdout)
        assert doc["vfio"] is None and doc["vfio_error"]["errno_name"] == "EBUSY"
    finally:
        be.close(held)
