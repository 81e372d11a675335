"""The CLI against a real kernel, inside the QEMU guests (vm/pytest_plugin.py).

What the kernel did is checked independently of pyvfio: lspci and dpdk-devbind.py for
enumeration, the sysfs driver link and VFIO_GROUP_GET_STATUS for binding, and problems are staged
for real (a child without CAP_IPC_LOCK and a low RLIMIT_MEMLOCK, a lowered dma_entry_limit, a
process holding /dev/vfio/N, interrupt remapping turned off under virtio-iommu, no vIOMMU at all).

The q35 machine's ICH9 functions (00:1f.0 LPC, 00:1f.2 SATA, 00:1f.3 SMBus) share one IOMMU group:
that is the multi-device group used for the non-viable bind.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest
from click.testing import CliRunner

from pyvfio.cli import cli

PCI = "/sys/bus/pci/devices"


@pytest.fixture(autouse=True)
def _state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PYVFIO_STATE_DIR", str(tmp_path / "state"))


def run_cli(*args: str) -> tuple[int, dict]:
    res = CliRunner().invoke(cli, ["--json", "--backend", "real", *args], catch_exceptions=False)
    return res.exit_code, json.loads(res.stdout)


def driver_of(bdf: str) -> str | None:
    link = os.path.join(PCI, bdf, "driver")
    return os.path.basename(os.readlink(link)) if os.path.islink(link) else None


def write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def group_viable(group: int) -> bool:
    """VFIO_GROUP_GET_STATUS's VIABLE flag, asked of the real kernel."""
    from pyvfio.ioctls import VFIO_GROUP_GET_STATUS
    from pyvfio.seam.real import RealBackend
    from pyvfio.uapi import ffi

    b = RealBackend()
    fd = b.open(f"/dev/vfio/{group}")
    try:
        st = ffi.new("struct vfio_group_status *")
        st.argsz = ffi.sizeof("struct vfio_group_status")
        b.ioctl(fd, VFIO_GROUP_GET_STATUS, st)
        return bool(st.flags & 1)
    finally:
        b.close(fd)


def wait_for(pred, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def lspci() -> dict[str, dict]:
    out = subprocess.run(["lspci", "-D", "-n", "-k"], check=True, capture_output=True, text=True).stdout
    devs: dict[str, dict] = {}
    cur = None
    for line in out.splitlines():
        m = re.match(r"^([0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) ([0-9a-f]{4}): ([0-9a-f]{4}:[0-9a-f]{4})", line)
        if m:
            cur = devs[m.group(1)] = {"class": m.group(2), "ids": m.group(3), "driver": None}
        elif cur is not None and "Kernel driver in use:" in line:
            cur["driver"] = line.split(":", 1)[1].strip()
    return devs


def devbind() -> dict[str, dict]:
    out = subprocess.run(["dpdk-devbind.py", "--status"], check=True, capture_output=True, text=True).stdout
    devs = {}
    for line in out.splitlines():
        m = re.match(r"^([0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) '.*? ([0-9a-f]{4})' (.*)$", line)
        if m:
            drv = re.search(r"\bdrv=(\S+)", m.group(3))
            devs[m.group(1)] = {"device": m.group(2), "driver": drv.group(1) if drv else None}
    return devs


def by_name(info: dict, name: str) -> dict:
    found = [d for d in info["devices"] if d["name"] == name]
    if not found:
        pytest.skip(f"no {name} in this guest")
    return found[0]


@pytest.mark.guest
def test_ls_agrees_with_lspci_and_dpdk_devbind(guest_variant, guest_info):
    code, doc = run_cli("ls")
    assert code == 0
    ours = {d["bdf"]: d for d in doc["devices"]}
    theirs = lspci()
    assert set(ours) == set(theirs) and len(ours) >= 3
    for bdf, t in theirs.items():
        assert ours[bdf]["ids"] == t["ids"], bdf
        assert ours[bdf]["class"][:4] == t["class"], bdf
        assert ours[bdf]["driver"] == t["driver"], bdf
    dpdk = devbind()
    assert dpdk, "dpdk-devbind.py listed no device (the e1000e NIC should be there)"
    for bdf, t in dpdk.items():
        assert ours[bdf]["device"] == t["device"] and ours[bdf]["driver"] == t["driver"], bdf
    edu = by_name(guest_info, "edu")
    assert ours[edu["bdf"]]["driver"] == "vfio-pci" and ours[edu["bdf"]]["vfio_usable"] is True
    assert ours[edu["bdf"]]["iommu_group"] == edu["iommu_group"]
    code, gdoc = run_cli("group", str(edu["iommu_group"]))
    assert code == 0 and gdoc["group"]["viable"] is True and gdoc["group"]["vfio_node_exists"] is True


@pytest.mark.guest
def test_bind_unbind_round_trips_the_host_driver(guest_variant, guest_info):
    nic = by_name(guest_info, "e1000e")
    bdf = nic["bdf"]
    assert driver_of(bdf) == "e1000e"
    code, doc = run_cli("bind", "--dry-run", bdf)
    assert code == 0 and driver_of(bdf) == "e1000e" and doc["uses"] == []
    try:
        code, doc = run_cli("bind", "--yes", bdf)
        assert code == 0, doc
        assert driver_of(bdf) == "vfio-pci" and doc["devices"][0]["driver_before"] == "e1000e"
        group = doc["group"]
        assert doc["vfio_node"] == f"/dev/vfio/{group}" and os.path.exists(f"/dev/vfio/{group}")
        assert group_viable(group)
        assert devbind()[bdf]["driver"] == "vfio-pci"
    finally:
        code, doc = run_cli("unbind", "--yes", bdf)
    assert code == 0, doc
    assert wait_for(lambda: driver_of(bdf) == "e1000e")
    assert doc["devices"][0]["driver_after"] == "e1000e" and devbind()[bdf]["driver"] == "e1000e"


@pytest.mark.guest
def test_bind_with_a_sibling_on_a_host_driver_is_non_viable(guest_variant):
    sata, smbus = "0000:00:1f.2", "0000:00:1f.3"
    if not (os.path.isdir(os.path.join(PCI, sata)) and os.path.isdir(os.path.join(PCI, smbus))):
        pytest.skip("no ICH9 functions in this guest")
    if not os.path.islink(os.path.join(PCI, smbus, "iommu_group")):
        pytest.skip(f"the ICH9 functions have no IOMMU group under {guest_variant} (the vIOMMU does not cover them)")
    group = int(os.path.basename(os.readlink(os.path.join(PCI, smbus, "iommu_group"))))
    members = sorted(os.listdir(f"/sys/kernel/iommu_groups/{group}/devices"))
    if sata not in members:
        pytest.skip(f"{sata} and {smbus} are not in one IOMMU group under {guest_variant}: {members}")
    assert driver_of(smbus) is None and driver_of(sata) is None
    subprocess.run(["modprobe", "-q", "i2c_i801"], check=False)
    write("/sys/bus/pci/drivers_probe", smbus)
    if driver_of(smbus) != "i801_smbus":
        pytest.skip(f"i2c_i801 did not take {smbus} (driver {driver_of(smbus)})")
    try:
        code, doc = run_cli("bind", "--yes", sata)
        assert code == 1
        assert doc["viable"] is False and smbus in [b["bdf"] for b in doc["blockers"]]
        assert smbus in doc["error"] and "i801_smbus" in doc["error"]
        assert driver_of(sata) is None
        code, doc = run_cli("group", str(group))
        assert doc["group"]["viable"] is False and smbus in [b["bdf"] for b in doc["group"]["blockers"]]
        # bound alone anyway: the kernel agrees the group is not viable
        code, doc = run_cli("bind", "--yes", "--partial", sata)
        assert code == 0 and doc["viable"] is False and driver_of(sata) == "vfio-pci"
        assert not group_viable(group)
        code, ddoc = run_cli("doctor", "--check", "group-viability")
        assert code == 1 and smbus in ddoc["checks"][0]["summary"]
    finally:
        run_cli("unbind", "--yes", sata)
        if driver_of(smbus):
            write(f"/sys/bus/pci/drivers/{driver_of(smbus)}/unbind", smbus)
    assert driver_of(sata) is None and driver_of(smbus) is None


def _kmsg_has_iommu_fault() -> bool:
    """Independently of pyvfio: does the guest's kernel log hold an IOMMU fault already?"""
    out = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    return bool(re.search(r"DMAR: \[DMA (Read|Write)|IO_PAGE_FAULT|page fault from EP", out))


def statuses(doc: dict) -> dict[str, str]:
    return {c["check"]: c["status"] for c in doc["checks"]}


@pytest.mark.guest(variants=["intel"])
def test_doctor_all_clear_then_each_staged_problem(guest_variant, guest_info):
    edu = by_name(guest_info, "edu")
    nr = "/proc/sys/vm/nr_hugepages"
    limit_path = "/sys/module/vfio_iommu_type1/parameters/dma_entry_limit"
    old_nr, old_limit = open(nr).read().strip(), open(limit_path).read().strip()
    write(nr, "32")  # 64 MiB of 2 MiB pages for a 64 MiB guest
    try:
        code, doc = run_cli("doctor", "--guest-memory", "64M")
        st = statuses(doc)
        assert code == 0 and doc["ok"] is True, doc
        for name in ("iommu", "interrupt-remapping", "modules", "group-viability", "memlock",
                     "dma-entry-limit", "hugepages", "movable-memory", "boot-framebuffer", "vfio-nodes",
                     "kernel-log"):
            if name == "kernel-log" and _kmsg_has_iommu_fault():
                assert st[name] == "warn", doc  # an earlier test in this guest made edu fault
                continue
            assert st[name] == "ok", (name, doc)
        # what remains is the environment: TCG has no /dev/kvm; edu has no reset method
        assert {k for k, v in st.items() if v == "warn"} <= {"kvm", "reset"}

        # low RLIMIT_MEMLOCK in a process without CAP_IPC_LOCK
        p = subprocess.Popen(["setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock",
                              "prlimit", "--memlock=65536:65536", "sleep", "60"])
        try:
            assert wait_for(lambda: open(f"/proc/{p.pid}/comm").read().strip() == "sleep")
            code, doc = run_cli("doctor", "--check", "memlock", "--pid", str(p.pid), "--guest-memory", "64M")
            assert code == 1 and statuses(doc)["memlock"] == "fail" and "64 KiB" in doc["checks"][0]["summary"]
        finally:
            p.kill()
            p.wait()

        # low dma_entry_limit
        write(limit_path, "10")
        code, doc = run_cli("doctor", "--check", "dma-entry-limit", "--mappings", "100")
        assert code == 1 and statuses(doc)["dma-entry-limit"] == "fail"
        write(limit_path, old_limit)
        code, doc = run_cli("doctor", "--check", "dma-entry-limit", "--mappings", "100")
        assert code == 0 and statuses(doc)["dma-entry-limit"] == "ok"

        # device in use: another process holds the group open
        node = f"/dev/vfio/{edu['iommu_group']}"
        p = subprocess.Popen(["sh", "-c", f"exec 3<>{node}; echo ready; exec sleep 60"],
                             stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "ready"
            code, doc = run_cli("doctor", "--check", "vfio-nodes")
            assert statuses(doc)["vfio-nodes"] == "warn" and f"pid {p.pid}" in doc["checks"][0]["summary"]
            code, doc = run_cli("doctor", "--check", "vfio-nodes", "--device", edu["bdf"])
            assert code == 1 and statuses(doc)["vfio-nodes"] == "fail"
            code, doc = run_cli("unbind", "--yes", edu["bdf"])
            assert code == 1 and f"pid {p.pid}" in doc["error"] and driver_of(edu["bdf"]) == "vfio-pci"
        finally:
            p.kill()
            p.wait()
        code, doc = run_cli("doctor", "--check", "vfio-nodes", "--device", edu["bdf"])
        assert code == 0 and statuses(doc)["vfio-nodes"] == "ok"
    finally:
        write(nr, old_nr)
        write(limit_path, old_limit)


@pytest.mark.guest(variants=["virtio"])
def test_doctor_virtio_iommu_without_interrupt_remapping(guest_variant):
    p = "/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"
    old = open(p).read().strip()
    try:
        write(p, "N")
        code, doc = run_cli("doctor", "--check", "interrupt-remapping")
        assert code == 1 and statuses(doc)["interrupt-remapping"] == "fail"
        assert "allow_unsafe_interrupts" in doc["checks"][0]["hint"]
        write(p, "Y")
        code, doc = run_cli("doctor", "--check", "interrupt-remapping")
        assert code == 0 and statuses(doc)["interrupt-remapping"] == "warn"
    finally:
        write(p, old)


@pytest.mark.guest(variants=["none"], kernels=["stable", "built"])
def test_doctor_and_ls_without_a_viommu(guest_variant):
    code, doc = run_cli("doctor", "--check", "iommu", "--check", "interrupt-remapping")
    st = statuses(doc)
    assert code == 1 and st["iommu"] == "fail" and st["interrupt-remapping"] == "skip"
    assert "intel-iommu" in doc["checks"][0]["hint"]
    code, doc = run_cli("ls")
    assert code == 0 and doc["devices"]
    assert all(d["iommu_group"] is None and d["vfio_usable"] is False for d in doc["devices"])
    code, doc = run_cli("group")
    assert code == 0 and doc["groups"] == []


@pytest.mark.guest
def test_info_opens_edu_through_vfio(guest_variant, guest_info):
    edu = by_name(guest_info, "edu")
    code, doc = run_cli("info", edu["bdf"])
    assert code == 0, doc
    v = doc["vfio"]
    regions = {r["name"]: r for r in v["regions"]}
    # edu: a 1 MiB memory BAR0 (QEMU docs/specs/edu.rst), config space through region 7
    assert regions["BAR0"]["size"] == 1 << 20 and regions["BAR0"]["mappable"]
    assert regions["CONFIG"]["size"] >= 256
    irqs = {q["name"]: q for q in v["irqs"]}
    assert irqs["INTX"]["count"] == 1 and irqs["MSI"]["count"] >= 1
    assert "MSI" in [c["name"] for c in v["pci_capabilities"]]
    assert v["container"]["api_version"] == 0 and v["container"]["extensions"]["TYPE1v2"] == 1
    assert int(v["iommu"]["iova_pgsizes"], 16) & 0x1000 and v["iommu"]["iova_ranges"]
    assert v["iommu"]["dma_avail"] == int(open("/sys/module/vfio_iommu_type1/parameters/dma_entry_limit").read())
    # the fds were closed again: the group can be opened by the next user
    assert group_viable(edu["iommu_group"])


@pytest.mark.guest(variants=["intel"])
def test_doctor_reports_an_iommu_fault_from_the_kernel_log(guest_variant, guest_info):
    """Make edu DMA to an IOVA that is not mapped: the kernel logs a DMAR fault; doctor shows it."""
    from pyvfio.vfio import open_device
    from pyvfio.vfio.edu import EduDevice

    edu = by_name(guest_info, "edu")
    with open_device(edu["bdf"], backend="real") as od, EduDevice(od.device) as dev:
        dev.enable_bus_master()
        dev.from_device(0x200000, 64)  # nothing is mapped at 2 MiB: the write must fault
    assert wait_for(_kmsg_has_iommu_fault, 5.0), "the guest kernel logged no DMAR fault"
    code, doc = run_cli("doctor", "--check", "kernel-log")
    st = statuses(doc)
    assert code == 0 and st["kernel-log"] == "warn", doc
    assert "IOMMU fault" in doc["checks"][0]["summary"]
    assert any("DMAR" in e and "fault" in e.lower() for e in doc["checks"][0]["evidence"])
