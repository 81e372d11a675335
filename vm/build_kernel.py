"""The iommufd guest kernel: Debian's linux-source-6.12 built with a small config fragment.

Debian's kernels have no CONFIG_IOMMUFD and no VFIO_DEVICE_CDEV.  This builds x86_64_defconfig +
IOMMUFD_FRAGMENT (everything built in, no modules) from the pinned linux-source-6.12 package
(vm/kernel.py LINUX_SOURCE) and caches the result under
``<cache>/kernels/amd64-iommufd-<hash>/`` where the hash covers the fragment, the source version
and this file's build recipe: change any of them and a new kernel is built.

    python -m vm build-kernel --dry-run   fetch + unpack the source, make the .config and check
                                          every fragment option took (about 1 min), no compile
    python -m vm build-kernel             the full build: about 12 min with -j2, at nice 19

The booted kernel gives /dev/iommu and /dev/vfio/devices/vfioN; the runner uses it with
``python -m vm run --iommufd`` or ``@pytest.mark.guest(iommufd=True)``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .kernel import LINUX_SOURCE_SERIES, Kernel, cache_root, private_apt

IOMMUFD_FRAGMENT = """\
# pyvfio guest kernel (the bed's "built" generation): on top of x86_64_defconfig, all built in
# CONFIG_MODULES is not set
CONFIG_PCI=y
CONFIG_PCI_MSI=y
CONFIG_PCI_IOV=y
CONFIG_PCIEPORTBUS=y
CONFIG_HOTPLUG_PCI_PCIE=y
CONFIG_X86_X2APIC=y
CONFIG_IOMMU_SUPPORT=y
CONFIG_IRQ_REMAP=y
CONFIG_INTEL_IOMMU=y
CONFIG_INTEL_IOMMU_SVM=n
CONFIG_AMD_IOMMU=y
CONFIG_VIRTIO_IOMMU=y
CONFIG_DEBUG_FS=y
CONFIG_IOMMU_DEBUGFS=y
CONFIG_INTEL_IOMMU_DEBUGFS=y
CONFIG_IOMMUFD=y
# /dev/vfio/vfio served by iommufd (the compat modes); excludes the legacy VFIO_CONTAINER, which
# the Debian generations of the bed provide
CONFIG_VFIO_CONTAINER=n
CONFIG_IOMMUFD_VFIO_CONTAINER=y
CONFIG_DEBUG_KERNEL=y
CONFIG_FAULT_INJECTION=y
CONFIG_RUNTIME_TESTING_MENU=y
CONFIG_IOMMUFD_TEST=y
CONFIG_VFIO=y
CONFIG_VFIO_GROUP=y
CONFIG_VFIO_DEVICE_CDEV=y
CONFIG_VFIO_NOIOMMU=y
CONFIG_VFIO_PCI=y
CONFIG_VFIO_PCI_CORE=y
CONFIG_VFIO_MDEV=y
CONFIG_SAMPLES=y
CONFIG_SAMPLE_VFIO_MDEV_MTTY=y
CONFIG_SAMPLE_VFIO_MDEV_MDPY=y
CONFIG_SAMPLE_VFIO_MDEV_MBOCHS=y
CONFIG_HUGETLBFS=y
CONFIG_TRANSPARENT_HUGEPAGE=y
CONFIG_MEMFD_CREATE=y
CONFIG_VIRTIO=y
CONFIG_VIRTIO_PCI=y
CONFIG_NET_9P=y
CONFIG_NET_9P_VIRTIO=y
CONFIG_9P_FS=y
CONFIG_OVERLAY_FS=y
CONFIG_TMPFS=y
CONFIG_DEVTMPFS=y
CONFIG_BLK_DEV_INITRD=y
CONFIG_RD_GZIP=y
CONFIG_SERIAL_8250=y
CONFIG_SERIAL_8250_CONSOLE=y
CONFIG_E1000E=y
CONFIG_IGB=y
CONFIG_BLK_DEV_NVME=y
CONFIG_MAGIC_SYSRQ=y
CONFIG_IKCONFIG=y
CONFIG_IKCONFIG_PROC=y
CONFIG_DEBUG_INFO_NONE=y
# trimmed from x86_64_defconfig: nothing here is used by the guest, and it shortens the build
CONFIG_DRM=n
CONFIG_FB=n
CONFIG_AGP=n
CONFIG_SOUND=n
CONFIG_USB_SUPPORT=n
CONFIG_WIRELESS=n
CONFIG_WLAN=n
CONFIG_CFG80211=n
CONFIG_NETFILTER=n
CONFIG_NFS_FS=n
CONFIG_HID=n
CONFIG_INPUT_JOYSTICK=n
CONFIG_INPUT_TABLET=n
CONFIG_INPUT_TOUCHSCREEN=n
CONFIG_INPUT_MOUSE=n
CONFIG_SECURITY_SELINUX=n
CONFIG_AUDIT=n
CONFIG_HIBERNATION=n
CONFIG_IPV6=n
CONFIG_EXT4_FS=n
CONFIG_ATA=n
CONFIG_SCSI=n
CONFIG_MD=n
CONFIG_NET_VENDOR_BROADCOM=n
CONFIG_NET_VENDOR_REALTEK=n
CONFIG_NET_VENDOR_NVIDIA=n
CONFIG_NET_VENDOR_MARVELL=n
# the 7.x build took about 17 min on 2 quiet cores; these are not used by any guest test either
CONFIG_INET=n
CONFIG_ETHTOOL_NETLINK=n
CONFIG_FTRACE=n
CONFIG_KPROBES=n
CONFIG_HYPERVISOR_GUEST=n
CONFIG_KEXEC=n
CONFIG_CRASH_DUMP=n
CONFIG_X86_MCE=n
CONFIG_SECURITY=n
CONFIG_KEYS=n
CONFIG_PROFILING=n
"""

# Options that must read exactly so in the final .config (=n means "is not set").
REQUIRED = {line.split("=")[0]: line.split("=")[1]
            for line in IOMMUFD_FRAGMENT.splitlines() if line.startswith("CONFIG_")}
REQUIRED["CONFIG_MODULES"] = "n"

RECIPE_VERSION = "2"
BUILD_DEPS = ("gcc", "make", "flex", "bison", "bc", "libelf-dev", "libssl-dev", "xz-utils",
              "cpio", "python3")


def fragment_hash() -> str:
    h = hashlib.sha256()
    h.update(IOMMUFD_FRAGMENT.encode())
    # the series, not the exact version: sid rolls point releases within weeks, and a warm
    # cache keeps the build it has (the build records its version in ``source``)
    h.update(f"{LINUX_SOURCE_SERIES[0]}@{LINUX_SOURCE_SERIES[1]}".encode())
    h.update(RECIPE_VERSION.encode())
    return h.hexdigest()[:12]


def output_dir() -> Path:
    return cache_root() / "kernels" / f"amd64-iommufd-{fragment_hash()}"


def cached_iommufd_kernel() -> Kernel | None:
    """The built iommufd kernel for the current fragment, or None."""
    out = output_dir()
    if not (out / ".complete").exists():
        return None
    release = (out / "release").read_text().strip()
    image = out / "boot" / f"vmlinuz-{release}"
    cfg = out / "boot" / f"config-{release}"
    return Kernel("amd64", release, out, image, out / "lib" / "modules" / release,
                  cfg if cfg.exists() else None)


def missing_build_tools() -> list[str]:
    tools = {"gcc": "gcc", "make": "make", "flex": "flex", "bison": "bison", "bc": "bc"}
    missing = [pkg for tool, pkg in tools.items() if shutil.which(tool) is None]
    for header, pkg in (("/usr/include/libelf.h", "libelf-dev"),
                        ("/usr/include/openssl/ssl.h", "libssl-dev")):
        if not os.path.exists(header):
            missing.append(pkg)
    return missing


def _say(msg: str) -> None:
    print(f"build-kernel: {msg}", file=sys.stderr, flush=True)


def source_version(*, network: bool = True) -> str:
    """The linux-source package version to build: the newest the suite offers (network), else the
    newest already unpacked in the cache."""
    pkg, suite = LINUX_SOURCE_SERIES
    if network:
        apt = private_apt("amd64", (suite,))
        try:
            apt.update()
            versions = apt.versions(pkg)
        except Exception:  # offline or mid-sync: fall back to the cache
            versions = []
        if versions:
            return versions[0]
    have = sorted((d.name.removeprefix(pkg + "-") for d in (cache_root() / "src").glob(pkg + "-*")
                   if (d / ".complete").exists()), reverse=True)
    if not have:
        raise RuntimeError(f"{pkg}: {suite} is unreachable and no source is cached")
    return have[0]


def fetch_source(version: str) -> Path:
    """Download + unpack linux-source-<series>=version; return the source tree."""
    pkg, suite = LINUX_SOURCE_SERIES
    src_root = cache_root() / "src" / f"{pkg}-{version}"
    tree = src_root / "tree"
    if (src_root / ".complete").exists():
        return next(p for p in tree.iterdir() if p.is_dir())
    if src_root.exists():
        shutil.rmtree(src_root)
    src_root.mkdir(parents=True)
    _say(f"downloading {pkg}={version} from {suite} (about 160 MB)")
    apt = private_apt("amd64", (suite,))
    [deb] = apt.download({pkg: version}, src_root)
    apt.extract(deb, src_root / "deb")
    tarballs = list((src_root / "deb" / "usr" / "src").glob("linux-source-*.tar.*"))
    if not tarballs:
        raise RuntimeError(f"{deb.name} holds no linux-source tarball")
    _say(f"unpacking {tarballs[0].name}")
    tree.mkdir()
    subprocess.run(_nice(["tar", "-xf", str(tarballs[0]), "-C", str(tree)]), check=True)
    shutil.rmtree(src_root / "deb")
    deb.unlink()
    (src_root / ".complete").write_text("")
    return next(p for p in tree.iterdir() if p.is_dir())


def _nice(cmd: list[str]) -> list[str]:
    return ["nice", "-n", "19", *cmd]


def configure(src: Path, build: Path) -> list[str]:
    """make O=build defconfig + fragment + olddefconfig; return the options that did not stick."""
    build.mkdir(parents=True, exist_ok=True)
    frag = build / "pyvfio.fragment"
    frag.write_text(IOMMUFD_FRAGMENT)
    env = dict(os.environ, KCONFIG_CONFIG=".config")
    subprocess.run(_nice(["make", "-s", "-C", str(src), f"O={build}", "x86_64_defconfig"]),
                   check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(_nice([str(src / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(build),
                          str(build / ".config"), str(frag)]),
                   check=True, cwd=src, stdout=subprocess.DEVNULL)
    subprocess.run(_nice(["make", "-s", "-C", str(src), f"O={build}", "olddefconfig"]),
                   check=True, env=env, stdout=subprocess.DEVNULL)
    have: dict[str, str] = {}
    for line in (build / ".config").read_text().splitlines():
        if line.startswith("CONFIG_"):
            k, _, v = line.partition("=")
            have[k] = v
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            have[line[2:].split()[0]] = "n"
    return [f"{k}={v} (got {have.get(k, 'n')})" for k, v in REQUIRED.items()
            if have.get(k, "n") != v]


def main(*, dry_run: bool = False, jobs: int = 2) -> int:
    if cached_iommufd_kernel() is not None and not dry_run:
        print(cached_iommufd_kernel().image)  # type: ignore[union-attr]
        return 0
    missing = missing_build_tools()
    if missing:
        _say(f"missing build tools: apt-get install {' '.join(missing)}")
        if not dry_run:
            return 1
    t0 = time.monotonic()
    version = source_version()
    src = fetch_source(version)
    build = cache_root() / "build" / f"iommufd-{fragment_hash()}"
    if missing:
        _say(f"dry run: source at {src}; would configure in {build} (tools missing, stopped)")
        return 1
    bad = configure(src, build)
    if bad:
        _say("fragment options did not take: " + ", ".join(bad))
        return 1
    _say(f"configured {build} in {time.monotonic() - t0:.0f} s; all {len(REQUIRED)} options took")
    if dry_run:
        _say(f"dry run: would run nice -n 19 make -C {src} O={build} -j{jobs} bzImage "
             f"into {output_dir()}")
        return 0
    _say(f"compiling {LINUX_SOURCE_SERIES[0]}={version} with -j{jobs} at nice 19 (about 12 min on "
         f"2 cores); log in {build}/build.log")
    with open(build / "build.log", "w") as log:
        r = subprocess.run(_nice(["make", "-C", str(src), f"O={build}", f"-j{jobs}", "bzImage"]),
                           stdout=log, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        _say(f"make failed ({r.returncode}); tail of {build}/build.log:")
        print("\n".join((build / "build.log").read_text().splitlines()[-30:]), file=sys.stderr)
        return 1
    release = subprocess.run(["make", "-s", "-C", str(src), f"O={build}", "kernelrelease"],
                             capture_output=True, text=True, check=True).stdout.strip()
    out = output_dir()
    staging = out.with_name(out.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "boot").mkdir(parents=True)
    shutil.copy2(build / "arch/x86/boot/bzImage", staging / "boot" / f"vmlinuz-{release}")
    shutil.copy2(build / ".config", staging / "boot" / f"config-{release}")
    (staging / "release").write_text(release + "\n")
    (staging / "fragment").write_text(IOMMUFD_FRAGMENT)
    (staging / ".pin").write_text(f"{LINUX_SOURCE_SERIES[0]}={version} + fragment {fragment_hash()}\n")
    (staging / ".complete").write_text("")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    _say(f"built {release} in {(time.monotonic() - t0) / 60:.1f} min: {out}")
    print(out / "boot" / f"vmlinuz-{release}")
    return 0


if __name__ == "__main__":
    sys.exit(main(dry_run="--dry-run" in sys.argv))
