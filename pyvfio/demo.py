"""The main job, end to end: a DMA round trip through QEMU's edu device with pyvfio.

``python -m pyvfio.demo [--backend mock|real] [--bdf BDF] [--size N]``

1. find the edu device (vendor 1234, device 11e8) bound to vfio-pci (or take ``--bdf``);
2. open it through VFIO in one call: container, group (from sysfs), type1v2 IOMMU, device;
3. show the IOMMU's info (page sizes, usable IOVA ranges, DMA_AVAIL);
4. map two DmaBuffers at IOVAs inside the ranges and edu's 28-bit DMA mask, DMA a pattern
   RAM → edu → RAM with an MSI (or INTx) on completion observed on an eventfd, compare the bytes;
5. unmap the destination and show that edu's write to that IOVA no longer lands.

Exit status 0 when every check holds, 1 otherwise (2: usage, 3: no edu device).
``tools/dev demo`` runs it in the x86 guest (real VFIO); ``tools/dev demo --mock`` on the mock.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .errors import PyvfioError
from .seam import Backend, get_backend
from .services.dma import DmaBuffer, DmaMapper
from .vfio import Group, Type1Iommu, open_device
from .vfio.device import PciIrq
from .vfio.edu import EduDevice

EDU_IDS = ("0x1234", "0x11e8")
EDU_DMA = 4095  # QEMU 7.2 aborts on a full 4096-byte edu transfer


def find_edu(backend: Backend) -> str | None:
    """The BDF of the first edu bound to vfio-pci (guest info JSON first, then sysfs)."""
    info = os.environ.get("PYVFIO_GUEST_INFO")
    if info and backend.name == "real":
        try:
            with open(info) as f:
                for d in json.load(f).get("devices", []):
                    if d.get("name") == "edu" and d.get("bound"):
                        return str(d["bdf"])
        except (OSError, ValueError):
            pass
    root = os.path.join(backend.sysfs_root, "bus", "pci", "devices")
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return None
    for bdf in names:
        try:
            ids = tuple(open(os.path.join(root, bdf, f)).read().strip() for f in ("vendor", "device"))
            drv = os.path.basename(os.readlink(os.path.join(root, bdf, "driver")))
        except OSError:
            continue
        if ids == EDU_IDS and drv == "vfio-pci":
            return bdf
    return None


def _say(msg: str) -> None:
    print(msg, flush=True)


def run(backend: Backend, bdf: str, size: int = EDU_DMA) -> bool:
    ok = True
    _say(f"pyvfio demo on the {backend.name} kernel: edu at {bdf}, IOMMU group "
         f"{Group.number_of(bdf, backend=backend)}")
    with open_device(bdf, backend=backend) as opened:
        c, iommu, dev = opened.container, opened.iommu, opened.device
        assert isinstance(iommu, Type1Iommu)
        ext = {k: v for k, v in c.extensions().items() if v}
        _say(f"  VFIO API {c.api_version()}, extensions: {', '.join(ext)}")
        info = iommu.info()
        ranges = ", ".join(f"{r.start:#x}-{r.end:#x}" for r in info.iova_ranges)
        _say(f"  type1v2 IOMMU: page sizes {info.iova_pgsizes:#x}, IOVA ranges {ranges}, "
             f"DMA_AVAIL {info.dma_avail}")
        edu = EduDevice(dev)
        _say(f"  edu ident {edu.ident:#010x}, liveness {'ok' if edu.liveness(0x12345678) else 'BAD'}")
        edu.enable_bus_master()
        mapper = DmaMapper(iommu, limit=edu.dma_mask + 1)
        src, dst = DmaBuffer(4096), DmaBuffer(4096)
        pattern = bytes((i * 37 + 11) & 0xFF for i in range(size))
        src.write(0, pattern)
        dst.fill(0)
        ms = mapper.map(src, write=False)
        md = mapper.map(dst, read=False)
        _say(f"  mapped src at IOVA {ms.iova:#x} (device reads), dst at {md.iova:#x} (device writes)")
        irq_index = PciIrq.MSI if dev.irq_info(PciIrq.MSI).count else PciIrq.INTX
        (efd,) = dev.enable_irq(irq_index, count=1)
        t0 = time.monotonic()
        edu.to_device(ms.iova, size)
        edu.from_device(md.iova, size, irq=True)
        got_irq = efd.wait(timeout=5.0)
        edu.ack_irq()
        dt = time.monotonic() - t0
        same = dst.read(0, size) == pattern
        ok &= same and got_irq > 0
        _say(f"  DMA {size} bytes RAM -> edu -> RAM in {dt * 1000:.0f} ms: "
             f"{'bytes match' if same else 'MISMATCH'}; {irq_index.name} interrupt "
             f"{'seen on the eventfd' if got_irq else 'NOT seen'}")
        dev.disable_irq(irq_index)
        iova = md.iova
        md.unmap()
        dst.fill(0)
        edu.from_device(iova, 64)
        landed = dst.read(0, 64) != bytes(64)
        ok &= not landed
        _say(f"  after unmapping {iova:#x}, edu's write there {'LANDED (bad)' if landed else 'did not land'}")
        ms.unmap()
        src.close()
        dst.close()
    _say("demo: OK" if ok else "demo: FAILED")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pyvfio.demo", description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=("real", "mock"), default=os.environ.get("PYVFIO_BACKEND", "real"))
    p.add_argument("--bdf", help="PCI address of the edu device (default: find it)")
    p.add_argument("--size", type=int, default=EDU_DMA, help="bytes per DMA (1..4095)")
    args = p.parse_args(argv)
    if not 1 <= args.size <= EDU_DMA:
        p.error(f"--size must be in 1..{EDU_DMA}")
    backend = get_backend(args.backend)
    bdf = args.bdf or find_edu(backend)
    if bdf is None:
        print("demo: no edu device (1234:11e8) bound to vfio-pci found; pass --bdf or bind one "
              "(echo vfio-pci > /sys/bus/pci/devices/BDF/driver_override; echo BDF > "
              "/sys/bus/pci/drivers_probe)", file=sys.stderr)
        return 3
    try:
        return 0 if run(backend, bdf, args.size) else 1
    except PyvfioError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
