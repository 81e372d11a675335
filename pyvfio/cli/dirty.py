"""``pyvfio dirty watch BDF``: watch the dirty pages of a container session, pages per second.

A VFIO container belongs to the process that opened it, so the verb runs its own session: it
opens BDF through VFIO (container, group, type1v2), maps ``--size`` bytes of DMA memory, starts
VFIO_IOMMU_DIRTY_PAGES tracking and reports every ``--interval`` seconds for ``--seconds``.
With ``--edu-writes K`` (edu devices) the device writes K random pages of the buffer in each
interval. What to expect: the real type1 without a vendor migration driver reports every mapped
page dirty at each report (pages/s = mapped pages / interval); the mock kernel reports exactly
the pages the device wrote.
"""

from __future__ import annotations

import random
from typing import Any

import click

from ..errors import ArgumentError
from ..services.dirty import DirtyTracker
from ..services.dma import DmaBuffer, DmaMapper
from ..vfio import open_device
from ..vfio.edu import EduDevice, is_edu
from ._common import EXIT_OK, RunEnv, table


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t, 0)
    except ValueError:
        raise ArgumentError(f"size {text!r}: use bytes or K/M/G suffixes (e.g. 64M)") from None


@click.group("dirty")
def dirty_group() -> None:
    """Dirty-page tracking (VFIO_IOMMU_DIRTY_PAGES)."""


@dirty_group.command("watch")
@click.argument("bdf")
@click.option("--seconds", type=click.FloatRange(min=0.01), default=5.0, show_default=True,
              help="How long to watch.")
@click.option("--interval", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              help="Seconds between reports.")
@click.option("--size", "size_text", default="16M", show_default=True, help="DMA memory to map and track.")
@click.option("--edu-writes", type=click.IntRange(min=0), default=0, show_default=True,
              help="edu only: device writes to random pages in each interval.")
@click.pass_obj
def watch_cmd(env: RunEnv, bdf: str, seconds: float, interval: float, size_text: str, edu_writes: int) -> None:
    """Map memory for BDF's container, track it and print dirty pages per second."""
    size = _size(size_text)
    if size <= 0:
        raise ArgumentError("--size must be positive")
    samples: list[dict[str, Any]] = []
    with open_device(bdf, backend=env.backend) as opened:
        during = None
        limit = None
        edu = None
        if edu_writes:
            if not is_edu(opened.device):
                raise ArgumentError(f"--edu-writes needs an edu device; {bdf} is not one")
            edu = EduDevice(opened.device)
            edu.enable_bus_master()
            limit = edu.dma_mask + 1
        mapper = DmaMapper(opened.iommu, limit=limit)
        with DmaBuffer(size) as buf:
            m = mapper.map(buf)
            with DirtyTracker(opened.iommu) as t:
                npages = m.size // t.page_size
                if edu is not None:
                    rng = random.Random(0)

                    def during() -> None:
                        for _ in range(edu_writes):
                            assert edu is not None
                            edu.from_device(m.iova + rng.randrange(npages) * t.page_size, 64)

                for s in t.watch(seconds, interval, iova=m.iova, size=m.size, during=during):
                    samples.append({"t": round(s.t, 3), "dirty_pages": s.dirty,
                                    "pages_per_s": round(s.pages_per_s, 1), "total": s.total})
                page_size = t.page_size
            m.unmap()
    elapsed = samples[-1]["t"] if samples else 0.0
    total = samples[-1]["total"] if samples else 0
    doc = {"bdf": bdf, "mapped_bytes": m.size, "iova": m.iova, "page_size": page_size,
           "mapped_pages": m.size // page_size, "interval": interval, "seconds": seconds,
           "samples": samples, "dirty_pages_total": total,
           "pages_per_s": round(total / elapsed, 1) if elapsed else 0.0}

    def text() -> None:
        click.echo(f"{bdf}: {m.size // page_size} pages of {page_size} bytes mapped at {m.iova:#x}, "
                   f"report every {interval} s")
        rows = [[f"{s['t']:.2f}", str(s["dirty_pages"]), f"{s['pages_per_s']:.0f}"] for s in samples]
        click.echo(table(rows, ["T(S)", "DIRTY", "PAGES/S"]))
        click.echo(f"{total} dirty pages in {elapsed:.2f} s: {doc['pages_per_s']:.0f} pages/s")

    env.emit(doc, text, EXIT_OK)
