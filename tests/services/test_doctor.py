"""Doctor checks on a fake /sys + /proc + /dev: each staged problem is detected, a clean host is all clear."""

from __future__ import annotations

import os

import pytest

from pyvfio.services.discovery import SysfsTreeSource
from pyvfio.services.doctor import Doctor, DoctorOptions, Status, parse_size, read_kmsg
from pyvfio.testing import limits_text, sample_host


@pytest.fixture
def host(tmp_path):
    h = sample_host(str(tmp_path))
    h.write("sys/bus/pci/devices/0000:00:03.0/reset_method", "bus\n")  # a clean host: edu resettable
    return h


def run(host, check=None, **opts):
    d = Doctor(SysfsTreeSource(host.paths.sys), host.paths, DoctorOptions(**opts), machine="x86_64")
    rep = d.run([check] if check else None)
    return rep.by_name(check) if check else rep


def test_clean_host_is_all_clear(host):
    rep = run(host)
    bad = [(r.name, r.status, r.summary) for r in rep.results if r.status not in (Status.OK, Status.SKIP)]
    assert bad == []
    assert not rep.failed and rep.to_dict()["ok"] is True
    assert {r.name for r in rep.results if r.status is Status.OK} >= {
        "iommu", "interrupt-remapping", "modules", "group-viability", "memlock", "dma-entry-limit",
        "hugepages", "movable-memory", "boot-framebuffer", "reset", "vfio-nodes", "kernel-log", "kvm"}


def test_no_iommu_at_all(host):
    host.remove("sys/firmware/acpi/tables/DMAR")
    os.rmdir(os.path.join(host.root, "sys/class/iommu/dmar0/intel-iommu"))
    os.rmdir(os.path.join(host.root, "sys/class/iommu/dmar0"))
    import shutil
    shutil.rmtree(os.path.join(host.root, "sys/kernel/iommu_groups"))
    r = run(host, "iommu")
    assert r.status is Status.FAIL and "no IOMMU" in r.summary and "intel-iommu" in r.hint
    assert run(host, "interrupt-remapping").status is Status.SKIP
    host.write("proc/cmdline", "root=/dev/vda1 intel_iommu=off\n")  # off, but nothing to turn on
    r = run(host, "iommu")
    assert r.summary.startswith("no IOMMU") and "intel-iommu" in r.hint and "intel_iommu=off" in r.hint


def test_dmar_present_but_not_enabled(host):
    import shutil
    shutil.rmtree(os.path.join(host.root, "sys/kernel/iommu_groups"))
    shutil.rmtree(os.path.join(host.root, "sys/class/iommu/dmar0"))
    host.write("proc/cmdline", "root=/dev/sda1 quiet\n")
    r = run(host, "iommu")
    assert r.status is Status.FAIL and "DMAR" in r.summary and "intel_iommu=on" in r.hint
    host.write("proc/cmdline", "root=/dev/sda1 intel_iommu=off\n")
    r = run(host, "iommu")
    assert r.status is Status.FAIL and "intel_iommu=off" in r.summary


def test_interrupt_remapping(host):
    host.write("proc/interrupts", "  0:  30  IO-APIC  2-edge  timer\n").write("dev/kmsg", "")
    r = run(host, "interrupt-remapping")
    assert r.status is Status.FAIL and "EPERM" in r.summary and "allow_unsafe_interrupts" in r.hint
    host.write("sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts", "Y\n")
    assert run(host, "interrupt-remapping").status is Status.WARN


def test_group_viability_names_the_sibling(host):
    host.remove("sys/bus/pci/devices/0000:01:00.0/driver")
    host.add_driver("vfio-pci")
    from pyvfio.mockkernel.host import _link
    _link(os.path.join(host.paths.sys, "bus/pci/drivers/vfio-pci"), host.dev_dir("0000:01:00.0") + "/driver")
    r = run(host, "group-viability")
    assert r.status is Status.FAIL and "0000:01:00.1" in r.summary and "snd_hda_intel" in r.summary
    assert "--whole-group" in r.hint
    # asking about a device whose own group is blocked by a sibling
    r = run(host, "group-viability", devices=["0000:00:02.0"])
    assert r.status is Status.FAIL


def test_memlock(host):
    host.write("proc/self/limits", limits_text(64 * 1024))
    r = run(host, "memlock", guest_memory=parse_size("2G"))
    assert r.status is Status.FAIL and "64 KiB" in r.summary and "2 GiB" in r.summary and "ulimit -l" in r.hint
    host.write("proc/self/status", "VmLck:\t 0 kB\nCapEff:\t0000000000004000\n")  # CAP_IPC_LOCK
    assert run(host, "memlock", guest_memory=parse_size("2G")).status is Status.OK
    host.write("proc/self/status", "VmLck:\t 0 kB\nCapEff:\t0000000000000000\n")
    host.write("proc/self/limits", limits_text(4 << 30))
    assert run(host, "memlock", guest_memory=parse_size("2G")).status is Status.OK
    host.write("proc/1234/limits", limits_text(1 << 20)).write("proc/1234/status", "CapEff:\t0\n")
    assert run(host, "memlock", pid="1234").status is Status.FAIL


def test_dma_entry_limit(host):
    host.write("sys/module/vfio_iommu_type1/parameters/dma_entry_limit", "100\n")
    r = run(host, "dma-entry-limit")
    assert r.status is Status.FAIL and "100" in r.summary and "dma_entry_limit" in r.hint
    assert run(host, "dma-entry-limit", mappings=50).status is Status.OK
    host.remove("sys/module/vfio_iommu_type1/parameters/dma_entry_limit")
    assert run(host, "dma-entry-limit").status is Status.SKIP


def test_hugepages(host):
    host.write("sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "0\n")
    r = run(host, "hugepages")
    assert r.status is Status.WARN and "nr_hugepages" in r.hint
    host.write("sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "256\n")
    r = run(host, "hugepages", guest_memory=parse_size("1G"))
    assert r.status is Status.WARN and "512 MiB" in r.summary


def test_movable_and_cma(host):
    host.append("proc/zoneinfo", "Node 0, zone  Movable\n  pages free  1000\n        present  262144\n")
    r = run(host, "movable-memory")
    assert r.status is Status.WARN and "1 GiB" in r.summary and "movablecore" in r.hint


def test_boot_framebuffer_in_a_bar(host):
    host.write("proc/iomem", "00000000-00000fff : Reserved\n"
                             "c0000000-febfffff : PCI Bus 0000:00\n"
                             "  c0000000-cfffffff : 0000:01:00.0\n"
                             "    c0000000-c02fffff : BOOTFB\n")
    r = run(host, "boot-framebuffer")
    assert r.status is Status.WARN and "0000:01:00.0" in r.summary
    r = run(host, "boot-framebuffer", devices=["0000:01:00.0"])
    assert r.status is Status.FAIL and "video=efifb:off" in r.hint
    host.write("proc/iomem", "00000000-00000000 : Reserved\n00000000-00000000 : PCI Bus 0000:00\n")
    assert run(host, "boot-framebuffer").status is Status.SKIP


def test_reset_method_missing(host):
    host.write("sys/bus/pci/devices/0000:00:03.0/reset_method", "\n")
    r = run(host, "reset")
    assert r.status is Status.WARN and "0000:00:03.0" in r.summary


def test_vfio_node_missing_or_busy(host):
    host.hold_open(4321, "qemu", "/dev/vfio/2")
    r = run(host, "vfio-nodes")
    assert r.status is Status.WARN and "pid 4321 (qemu)" in r.summary
    assert run(host, "vfio-nodes", devices=["0000:00:03.0"]).status is Status.FAIL
    host.remove("dev/vfio/2")
    r = run(host, "vfio-nodes")
    assert r.status is Status.FAIL and "/dev/vfio/2 is missing" in r.summary


def test_device_in_use_by_host(host):
    r = run(host, "device-use", devices=["0000:00:04.0"])
    assert r.status is Status.FAIL and "/data" in r.summary
    assert run(host, "device-use", devices=["0000:01:00.0"]).status is Status.OK


def test_kernel_log(host):
    host.append("dev/kmsg", "3,9,900,-;DMAR: [DMA Write NO_PASID] Request device [00:03.0] fault addr 0x1000 "
                            "[fault reason 0x05] PTE Write access is not set\n")
    r = run(host, "kernel-log")
    assert r.status is Status.WARN and "1 IOMMU fault" in r.summary and any("0x1000" in e for e in r.evidence)
    host.append("dev/kmsg", "3,10,901,-;vfio-pci 0000:00:03.0: Device is ineligible for IOMMU domain attach "
                            "due to platform RMRR requirement.  Contact your platform vendor.\n")
    assert run(host, "kernel-log").status is Status.FAIL
    host.remove("dev/kmsg")
    assert run(host, "kernel-log").status is Status.SKIP


def test_kvm_missing(host):
    host.remove("dev/kvm")
    assert run(host, "kvm").status is Status.WARN


def test_read_kmsg_format(tmp_path):
    p = tmp_path / "kmsg"
    p.write_text("6,1,1,-;hello\n SUBSYSTEM=pci\n4,2,2,c;world\n")
    assert read_kmsg(str(p)) == ["hello", "world"]
    assert read_kmsg(str(tmp_path / "missing")) is None


def test_parse_size():
    assert parse_size("4G") == 4 << 30 and parse_size("512M") == 512 << 20 and parse_size("1.5GiB") == 3 << 29
    assert parse_size("65536") == 65536
    with pytest.raises(ValueError):
        parse_size("lots")
