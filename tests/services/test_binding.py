"""Binding on a fake host whose driver core is emulated: in-use refusals, viability, restore, rollback."""

from __future__ import annotations

import errno
import json
import os

import pytest

from pyvfio.errors import PyvfioError
from pyvfio.services import binding as b
from pyvfio.services.discovery import SysfsTreeSource
from pyvfio.services.binding import DriverCore as EmulatedDriverCore  # the host at a fake tree reacts
from pyvfio.testing import FakeHost, sample_host


@pytest.fixture
def host(tmp_path):
    return sample_host(str(tmp_path))


@pytest.fixture
def env(host):
    return SysfsTreeSource(host.paths.sys), EmulatedDriverCore(host.paths)


def drv(src, bdf):
    return src.device(bdf).driver


def test_net_route_and_mount_are_host_uses(host, env):
    src, _ = env
    uses = b.find_uses(host.paths, src.device("0000:00:02.0"))
    assert [(u.kind, u.what) for u in uses] == [("net-route", "eth0 carries route 10.0.2.0/24")]
    uses = b.find_uses(host.paths, src.device("0000:00:04.0"))
    assert [(u.kind, u.what) for u in uses] == [("mount", "/dev/nvme0n1p1 is mounted on /data")]
    assert b.find_uses(host.paths, src.device("0000:01:00.0")) == []


def test_swap_ipv6_and_link_local(tmp_path):
    h = FakeHost(str(tmp_path))
    h.add_pci("0000:00:05.0", 0x1AF4, 0x1042, class_code=0x010000, driver="virtio-pci", group=1)
    h.add_block("0000:00:05.0", "vda", "254:0", {"vda2": "254:2"})
    h.add_pci("0000:00:06.0", 0x8086, 0x10D3, class_code=0x020000, driver="e1000e", group=2)
    h.add_net("0000:00:06.0", "enp0s6")
    src = SysfsTreeSource(h.paths.sys)
    paths = h.paths
    assert b.find_uses(paths, src.device("0000:00:05.0")) == []
    h.swapon("/dev/vda2")
    assert [u.kind for u in b.find_uses(paths, src.device("0000:00:05.0"))] == ["swap"]
    # a link-local address (fe80::/10, scope 0x20) appears on any interface that is up: not a use
    h.add_ipv6_address("enp0s6", "fe800000000000000000000000000001", 64, scope=0x20)
    assert b.find_uses(paths, src.device("0000:00:06.0")) == []
    h.add_ipv6_address("enp0s6", "20010db8000000000000000000000001", 64)
    uses = b.find_uses(paths, src.device("0000:00:06.0"))
    assert [u.kind for u in uses] == ["net-address"] and "2001:db8::1/64" in uses[0].what


def test_holder_of_vfio_group_is_found(host, env):
    src, _ = env
    host.hold_open(4242, "qemu-system-x86", "/dev/vfio/2")
    host.hold_open(4243, "bash", "/dev/null")
    uses = b.find_uses(host.paths, src.device("0000:00:03.0"))
    assert [(u.kind, u.what) for u in uses] == [("vfio-fd", "pid 4242 (qemu-system-x86) holds /dev/vfio/2 open")]


def test_bind_refuses_device_in_use_before_writing(host, env):
    src, core = env
    with pytest.raises(b.DeviceInUseError) as ei:
        b.bind(src, "0000:00:04.0", paths=host.paths, core=core)
    assert ei.value.errno == errno.EBUSY and "mounted on /data" in str(ei.value)
    assert drv(src, "0000:00:04.0") == "nvme"
    assert not os.path.exists(os.path.join(host.paths.state, "original-drivers.json"))


def test_bind_unbind_round_trip_remembers_driver(host, env):
    src, core = env
    res = b.bind(src, "0000:00:02.0", paths=host.paths, core=core, force=True, timeout=1)
    assert drv(src, "0000:00:02.0") == "vfio-pci"
    assert res.vfio_node == "/dev/vfio/1" and os.path.exists(os.path.join(host.paths.dev, "vfio", "1"))
    assert [s.done for s in res.steps] == [True] * 4
    saved = json.load(open(os.path.join(host.paths.state, "original-drivers.json")))
    assert saved["0000:00:02.0"]["driver"] == "e1000e"
    # binding again keeps the first (host) driver on record
    b.bind(src, "0000:00:02.0", paths=host.paths, core=core, force=True, timeout=1)
    res = b.unbind(src, "0000:00:02.0", paths=host.paths, core=core, timeout=1)
    assert [(c.before, c.after) for c in res.changes] == [("vfio-pci", "e1000e")]
    assert drv(src, "0000:00:02.0") == "e1000e"
    assert not os.path.exists(os.path.join(host.paths.dev, "vfio", "1"))
    assert "0000:00:02.0" not in json.load(open(os.path.join(host.paths.state, "original-drivers.json")))


def test_non_viable_group_names_the_sibling(host, env):
    src, core = env
    with pytest.raises(b.GroupNotViableError) as ei:
        b.bind(src, "0000:01:00.0", paths=host.paths, core=core)
    assert "0000:01:00.1" in str(ei.value) and "snd_hda_intel" in str(ei.value)
    assert ei.value.to_dict()["blockers"][0]["bdf"] == "0000:01:00.1"
    assert drv(src, "0000:01:00.0") == "nouveau"
    res = b.bind(src, "0000:01:00.0", paths=host.paths, core=core, partial=True, timeout=1)
    assert res.viable is False and [d.bdf for d in res.blockers] == ["0000:01:00.1"]
    assert drv(src, "0000:01:00.0") == "vfio-pci" and not src.group(4).viability.viable


def test_whole_group_bind_and_unbind(host, env):
    src, core = env
    res = b.bind(src, "0000:01:00.1", paths=host.paths, core=core, whole_group=True, timeout=1)
    assert res.viable is True and {c.bdf for c in res.changes} == {"0000:01:00.0", "0000:01:00.1"}
    assert src.group(4).viability.viable
    b.unbind(src, "0000:01:00.0", paths=host.paths, core=core, whole_group=True, timeout=1)
    assert (drv(src, "0000:01:00.0"), drv(src, "0000:01:00.1")) == ("nouveau", "snd_hda_intel")


def test_dry_run_changes_nothing(host, env):
    src, core = env
    res = b.bind(src, "0000:01:00.0", paths=host.paths, core=core, whole_group=True, dry_run=True)
    assert [s.action for s in res.steps][:3] == ["unbind", "override", "probe"] and not any(s.done for s in res.steps)
    assert drv(src, "0000:01:00.0") == "nouveau" and drv(src, "0000:01:00.1") == "snd_hda_intel"


def test_failed_probe_rolls_back_to_the_original_driver(host, env):
    src, core = env
    os.rename(os.path.join(host.paths.sys, "bus/pci/drivers/vfio-pci"), os.path.join(host.root, "vfio-pci.unloaded"))
    with pytest.raises(PyvfioError) as ei:
        b.bind(src, "0000:02:00.0", paths=host.paths, core=core, timeout=0.05)
    assert ei.value.errno == errno.ETIMEDOUT and "modprobe vfio-pci" in ei.value.hint
    assert drv(src, "0000:02:00.0") == "igb" and src.device("0000:02:00.0").driver_override is None


def test_whole_group_failure_rolls_back_every_moved_device(host, env, monkeypatch):
    src, core = env
    real_probe = core.probe

    def probe(bdf):
        if bdf == "0000:01:00.1":
            raise OSError(errno.EIO, "injected", "drivers_probe")
        real_probe(bdf)

    monkeypatch.setattr(core, "probe", probe)
    with pytest.raises(OSError):
        b.bind(src, "0000:01:00.0", paths=host.paths, core=core, whole_group=True, timeout=0.2)
    monkeypatch.setattr(core, "probe", real_probe)
    assert drv(src, "0000:01:00.0") == "nouveau"


def test_probe_without_iommu_group_fails_like_vfio_pci(host, env):
    src, core = env
    with pytest.raises(PyvfioError) as ei:
        b.bind(src, "0000:03:00.0", paths=host.paths, core=core, timeout=0.2)
    assert ei.value.errno == errno.EINVAL and ei.value.op == "drivers_probe"
    assert drv(src, "0000:03:00.0") == "virtio-pci"


def test_unbind_refuses_while_another_process_holds_the_group(host, env):
    src, core = env
    host.hold_open(777, "qemu", "/dev/vfio/2")
    with pytest.raises(b.DeviceInUseError) as ei:
        b.unbind(src, "0000:00:03.0", paths=host.paths, core=core)
    assert "pid 777 (qemu)" in str(ei.value)
    assert drv(src, "0000:00:03.0") == "vfio-pci"


def test_unbind_without_record_lets_the_kernel_choose(host, env):
    src, core = env
    res = b.unbind(src, "0000:00:03.0", paths=host.paths, core=core, timeout=0.1)
    # edu has no host driver in this tree: the probe finds none and it stays unbound
    assert res.changes[0].after is None and drv(src, "0000:00:03.0") is None
    res = b.unbind(src, "0000:00:02.0", paths=host.paths, core=core, restore=False, force=True)
    assert drv(src, "0000:00:02.0") is None


def test_sysfs_write_errors_are_typed(host, env, monkeypatch):
    src, core = env

    def denied(self, path, value, op):
        raise b.from_oserror(PermissionError(errno.EACCES, "Permission denied", path), op=op)

    monkeypatch.setattr(b.DriverCore, "_write", denied)
    with pytest.raises(PermissionError):
        b.bind(src, "0000:02:10.0", paths=host.paths, core=core, timeout=0.1)


def _pci_ancestor(sys_path: str) -> str | None:
    import re

    found = re.findall(r"/([0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])(?=/)", os.path.realpath(sys_path) + "/")
    return found[-1] if found else None


def test_real_host_root_filesystem_device_is_in_use():
    """On this machine: the PCI device under the block device of / is reported as in use."""
    from pyvfio.services.discovery import HostPaths, open_source

    st = os.stat("/")
    bdf = _pci_ancestor(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    if bdf is None:
        pytest.skip("/ is not on a PCI block device here (overlay, 9p, nfs...)")
    uses = b.find_uses(HostPaths.real(), open_source("/sys").device(bdf))
    assert any(u.kind == "mount" and u.what.endswith("mounted on /") for u in uses), uses


def test_real_host_default_route_device_is_in_use():
    """On this machine: the PCI NIC carrying the default route is reported as in use."""
    from pyvfio.services.discovery import HostPaths, open_source

    ifname = None
    with open("/proc/net/route") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == "00000000" and fields[7] == "00000000":
                ifname = fields[0]
    if ifname is None or not os.path.exists(f"/sys/class/net/{ifname}/device"):
        pytest.skip("no default route through a PCI device here")
    bdf = _pci_ancestor(f"/sys/class/net/{ifname}/device")
    if bdf is None:
        pytest.skip(f"{ifname} is not a PCI device")
    uses = b.find_uses(HostPaths.real(), open_source("/sys").device(bdf))
    assert any(u.kind == "net-route" and u.what == f"{ifname} carries route 0.0.0.0/0" for u in uses), uses
