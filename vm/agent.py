"""Guest-side agent: binds devices to vfio-pci, runs the job, restores drivers, records the exit code.

Run by the guest's /init (vm/init.sh) inside the chroot of the host root, as
``<host python> -I -S vm/agent.py <results>/job.json``: standard library only, no site packages.

Files it writes into the results share (read by vm/guest.py on the host):
  guest-info.json  variant, kernel, every PCI device of interest (BDF, vendor:device, group,
                   driver, /dev/vfio/N) and the binding outcome; exported to the job as
                   $PYVFIO_GUEST_INFO
  exit_code        the job's exit code (written last, atomically; absent = the run failed)
  restore.json     what unbinding/restoring did after the job (best effort)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

PCI = "/sys/bus/pci/devices"

# name -> (vendor, device) of the PCI devices the test bed knows
KNOWN = {
    "edu": ("0x1234", "0x11e8"),
    "e1000e": ("0x8086", "0x10d3"),
    "nvme": ("0x1b36", "0x0010"),
    "igb": ("0x8086", "0x10c9"),
}


def log(msg: str) -> None:
    print(f"pyvfio-guest: {msg}", flush=True)


def read(path: str, default: str = "") -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def modprobe(*args: str) -> bool:
    """modprobe -q; a module already loaded or built in, or a kernel without modules, is a no-op."""
    if os.path.isdir("/sys/module/" + args[0].replace("-", "_")):
        return True
    if not os.path.isdir("/lib/modules/" + os.uname().release):
        return False
    r = subprocess.run(["modprobe", "-q", *args], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    if r.returncode != 0 and r.stderr.strip():  # -q: no module for an alias is silent
        log(f"modprobe {' '.join(args)} failed: {r.stderr.strip()}")
    return r.returncode == 0


def driver_of(bdf: str) -> str | None:
    link = os.path.join(PCI, bdf, "driver")
    return os.path.basename(os.readlink(link)) if os.path.islink(link) else None


def group_of(bdf: str) -> int | None:
    link = os.path.join(PCI, bdf, "iommu_group")
    return int(os.path.basename(os.readlink(link))) if os.path.islink(link) else None


def scan() -> list[dict]:
    """Every PCI device whose vendor:device the test bed knows."""
    found = []
    for bdf in sorted(os.listdir(PCI)):
        ids = (read(os.path.join(PCI, bdf, "vendor")), read(os.path.join(PCI, bdf, "device")))
        for name, known in KNOWN.items():
            if ids == known:
                found.append({"name": name, "bdf": bdf, "vendor": ids[0], "device": ids[1]})
    return found


def bind_vfio(dev: dict, wait: float = 5.0) -> None:
    bdf = dev["bdf"]
    base = os.path.join(PCI, bdf)
    dev["original_driver"] = driver_of(bdf)
    try:
        if dev["original_driver"]:
            write(os.path.join(base, "driver", "unbind"), bdf)
        write(os.path.join(base, "driver_override"), "vfio-pci")
        try:
            write("/sys/bus/pci/drivers_probe", bdf)
        except OSError as e:  # probe failure (e.g. no IOMMU group) is reported, not fatal
            dev["bind_error"] = f"drivers_probe: {e.strerror} (errno {e.errno})"
    except OSError as e:
        dev["bind_error"] = f"{e.filename}: {e.strerror} (errno {e.errno})"
    dev["driver"] = driver_of(bdf)
    group = group_of(bdf)
    dev["iommu_group"] = group
    if dev["driver"] != "vfio-pci" and "bind_error" not in dev:
        dev["bind_error"] = ("vfio-pci did not bind" +
                             (" (the device has no IOMMU group)" if group is None else ""))
    if dev["driver"] == "vfio-pci" and group is not None:
        node = f"/dev/vfio/{group}"
        deadline = time.monotonic() + wait
        while not os.path.exists(node) and time.monotonic() < deadline:
            time.sleep(0.02)
        dev["vfio_dev"] = node if os.path.exists(node) else None
        if dev["vfio_dev"] is None:
            dev["bind_error"] = f"{node} did not appear within {wait} s"
    cdev_dir = os.path.join(base, "vfio-dev")
    if os.path.isdir(cdev_dir):  # VFIO_DEVICE_CDEV kernels
        names = os.listdir(cdev_dir)
        node = f"/dev/vfio/devices/{names[0]}" if names else None
        dev["vfio_cdev"] = node if node and os.path.exists(node) else None
    dev["bound"] = dev["driver"] == "vfio-pci"


def load_host_driver(dev: dict) -> None:
    """No udev in the guest: load the driver module of an unbound device by its modalias."""
    alias = read(os.path.join(PCI, dev["bdf"], "modalias"))
    if alias and driver_of(dev["bdf"]) is None:
        modprobe(alias)
    dev["driver"] = driver_of(dev["bdf"])
    dev["iommu_group"] = group_of(dev["bdf"])
    dev["bound"] = False


def restore(dev: dict) -> dict:
    """Unbind from vfio-pci, clear driver_override and hand the device to its host driver
    (loaded by modalias: the guest has no udev), if it has one."""
    bdf = dev["bdf"]
    base = os.path.join(PCI, bdf)
    out = {"bdf": bdf, "name": dev["name"]}
    try:
        if driver_of(bdf) == "vfio-pci":
            write("/sys/bus/pci/drivers/vfio-pci/unbind", bdf)
        write(os.path.join(base, "driver_override"), "\n")
        alias = read(os.path.join(base, "modalias"))
        if alias:
            modprobe(alias)
        write("/sys/bus/pci/drivers_probe", bdf)
        out["driver"] = driver_of(bdf)
        out["ok"] = out["driver"] != "vfio-pci"
    except OSError as e:
        out["ok"] = False
        out["error"] = f"{e.filename}: {e.strerror}"
    return out


def atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def main(job_path: str) -> int:
    t0 = time.monotonic()
    with open(job_path) as f:
        job = json.load(f)
    results = job["results_dir"]
    variant = job["variant"]
    os.environ.clear()
    os.environ.update(job["env"])

    log(f"up {read('/proc/uptime').split()[0]} s after boot; variant {variant}; "
        f"kernel {os.uname().release}")
    modprobe("vfio-pci")
    modprobe("vfio_iommu_type1")
    unsafe = []
    if job.get("allow_unsafe_interrupts"):
        for mod in ("vfio_iommu_type1", "iommufd"):
            p = f"/sys/module/{mod}/parameters/allow_unsafe_interrupts"
            if os.path.exists(p):
                write(p, "Y")
                unsafe.append(mod)

    devices = scan()
    want = set(job.get("bind", ["edu"]))
    for dev in devices:
        if dev["name"] in want:
            bind_vfio(dev)
        else:
            load_host_driver(dev)
    for name in want - {d["name"] for d in devices}:
        log(f"asked to bind {name}, but no such device is present")
    info = {
        "variant": variant,
        "kernel": os.uname().release,
        "kernel_generation": job.get("kernel_generation", "stable"),
        "kernel_pin": job.get("kernel_pin", ""),
        "iommufd": os.path.exists("/dev/iommu"),
        "allow_unsafe_interrupts": unsafe,
        "devices": devices,
        "bound": [d["bdf"] for d in devices if d.get("bound")],
        "results_dir": results,
    }
    info_path = os.path.join(results, "guest-info.json")
    atomic_write(info_path, json.dumps(info, indent=2) + "\n")
    for d in devices:
        state = (f"vfio-pci, group {d.get('iommu_group')}, {d.get('vfio_dev')}" if d.get("bound")
                 else f"driver {d.get('driver')}, group {d.get('iommu_group')}")
        err = f" ({d['bind_error']})" if d.get("bind_error") else ""
        log(f"{d['name']} {d['bdf']} {d['vendor'][2:]}:{d['device'][2:]}: {state}{err}")

    env = dict(job["env"])
    env.update(PYVFIO_GUEST=variant, PYVFIO_GUEST_INFO=info_path, PYVFIO_IN_GUEST="1")
    log(f"setup took {time.monotonic() - t0:.2f} s; running {' '.join(job['argv'])}")
    t1 = time.monotonic()
    try:
        rc = subprocess.call(job["argv"], cwd=job["cwd"], env=env, stdin=subprocess.DEVNULL)
    except OSError as e:
        log(f"cannot run {job['argv'][0]}: {e}")
        rc = 127
    log(f"job exited {rc} after {time.monotonic() - t1:.2f} s")

    restored = [restore(d) for d in devices if d.get("bound")]
    bad = [r for r in restored if not r.get("ok")]
    if restored:
        log("restored: " + ", ".join(f"{r['name']} -> {r.get('driver') or 'no driver'}"
                                     for r in restored))
    if bad:
        log(f"restore incomplete: {bad}")
    atomic_write(os.path.join(results, "restore.json"), json.dumps(restored, indent=2) + "\n")
    atomic_write(os.path.join(results, "exit_code"), f"{rc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
