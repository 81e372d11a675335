"""The uAPI layer, proven against real kernel headers by a generated C probe.

tools/uapi/probe.py generates one C program per header set from pyvfio's own declarations
(every struct, field, request and constant), compiles it (the ppc64le one with the cross
compiler, run under qemu-user) and compares every value with pyvfio's ffi and ioctls.

Without the headers or cross tools (pytest run before `tools/dev setup`) these tests skip with
the reason; under CI (CI=true) or PYVFIO_REQUIRE_UAPI=1 a missing header set is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from pyvfio import ioctls
from pyvfio.uapi import kvm

ROOT = Path(__file__).resolve().parents[2]
SETS = ("installed", "pinned-amd64", "pinned-ppc64le")


def _load_probe():
    spec = importlib.util.spec_from_file_location("pyvfio_uapi_probe", ROOT / "tools/uapi/probe.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


probe = _load_probe()

#: Structs the issue lists; each must be compared on every header set that declares it.
LISTED_STRUCTS = (
    "vfio_info_cap_header", "vfio_group_status", "vfio_device_info", "vfio_region_info",
    "vfio_region_info_cap_sparse_mmap", "vfio_region_sparse_mmap_area", "vfio_region_info_cap_type",
    "vfio_irq_info", "vfio_irq_set", "vfio_pci_hot_reset_info", "vfio_pci_dependent_device",
    "vfio_pci_hot_reset", "vfio_device_feature", "vfio_device_feature_migration",
    "vfio_device_feature_mig_state", "vfio_device_feature_dma_logging_control",
    "vfio_device_feature_dma_logging_range", "vfio_device_feature_dma_logging_report",
    "vfio_device_bind_iommufd", "vfio_device_attach_iommufd_pt", "vfio_device_detach_iommufd_pt",
    "vfio_iommu_type1_info", "vfio_iommu_type1_info_cap_iova_range", "vfio_iova_range",
    "vfio_iommu_type1_info_cap_migration", "vfio_iommu_type1_info_dma_avail",
    "vfio_iommu_type1_dma_map", "vfio_iommu_type1_dma_unmap", "vfio_bitmap",
    "vfio_iommu_type1_dirty_bitmap", "vfio_iommu_type1_dirty_bitmap_get",
    "vfio_iommu_spapr_tce_info", "vfio_iommu_spapr_tce_ddw_info", "vfio_iommu_spapr_register_memory",
    "vfio_iommu_spapr_tce_create", "vfio_iommu_spapr_tce_remove", "vfio_eeh_pe_op",
    "iommu_destroy", "iommu_ioas_alloc", "iommu_ioas_iova_ranges", "iommu_iova_range",
    "iommu_ioas_allow_iovas", "iommu_ioas_map", "iommu_ioas_copy", "iommu_ioas_unmap",
    "iommu_option", "iommu_hwpt_alloc", "iommu_hw_info", "iommu_hwpt_set_dirty_tracking",
    "iommu_hwpt_get_dirty_bitmap", "iommu_hwpt_invalidate", "iommu_fault_alloc",
    "kvm_userspace_memory_region", "kvm_userspace_memory_region2", "kvm_dirty_log",
    "kvm_clear_dirty_log", "kvm_enable_cap", "kvm_regs", "kvm_sregs", "kvm_segment", "kvm_dtable",
    "kvm_run", "kvm_create_device", "kvm_device_attr", "kvm_ioeventfd", "kvm_irqfd",
    "kvm_create_guest_memfd", "kvm_memory_attributes", "kvm_dirty_gfn",
)


def _required() -> bool:
    return os.environ.get("CI") == "true" or os.environ.get("PYVFIO_REQUIRE_UAPI") == "1"


_reports: dict[str, object] = {}


def _report(name: str):
    """Run the probe for one header set (once per session); skip or fail if it cannot run."""
    if name not in _reports:
        hs = probe.header_sets()[name]
        why = probe.unavailable(hs)
        if why:
            msg = f"header set {name} unavailable: {why}; run `tools/dev setup`"
            if _required():
                pytest.fail(msg + " (required: CI / PYVFIO_REQUIRE_UAPI=1)", pytrace=False)
            pytest.skip(msg)
        _reports[name] = probe.run(hs)
    return _reports[name]


@pytest.mark.parametrize("name", SETS)
def test_every_value_matches_the_headers(name: str) -> None:
    rep = _report(name)
    print(rep.format())
    assert rep.compared, f"{name}: nothing was compared"
    assert not rep.mismatches, (
        f"{len(rep.mismatches)} values differ between pyvfio and the {name} headers "
        f"({rep.linux_version}):\n  " + "\n  ".join(rep.mismatches))


@pytest.mark.parametrize("name", ("pinned-amd64", "pinned-ppc64le"))
def test_pinned_headers_declare_everything(name: str) -> None:
    """The pinned 6.12 set must answer every item; only x86-only names skip on ppc64le."""
    rep = _report(name)
    assert rep.linux_version == probe.header_sets()[name].expect_version
    unexpected = {k: why for k, why in rep.skipped.items()
                  if not ("x86_64 only" in why or "x86-only" in why)}
    assert not unexpected, "\n".join(f"{k}: {why}" for k, why in sorted(unexpected.items()))
    arch = probe.header_sets()[name].arch
    for sname in LISTED_STRUCTS:
        x86_only = kvm.ARCH_ONLY.get(f"struct {sname}") not in (None, arch)
        key = f"sizeof(struct {sname})"
        if x86_only:
            assert f"{key} and its fields" in rep.skipped, f"{key} not skipped by name on {name}"
        else:
            assert key in rep.compared, f"{key} was not compared on {name}"
    for req in ioctls.request_names(arch):
        assert f"request {req}" in rep.compared, f"request {req} not compared on {name}"


def test_installed_headers_names_skipped_by_name() -> None:
    """The older installed set skips only names it lacks; each is reported with its reason."""
    rep = _report("installed")
    for key, why in rep.skipped.items():
        assert ("not declared" in why or "is not in this header set" in why
                or "has no member" in why), f"{key}: unexpected skip reason {why!r}"
    # the core of the list exists in 6.1 and must be compared there
    for sname in ("vfio_iommu_type1_dma_map", "vfio_iommu_type1_dma_unmap", "vfio_region_info",
                  "vfio_irq_set", "vfio_device_feature", "vfio_iommu_spapr_tce_create",
                  "kvm_userspace_memory_region", "kvm_dirty_log", "kvm_clear_dirty_log",
                  "kvm_regs", "kvm_sregs", "kvm_irqfd", "kvm_ioeventfd", "kvm_device_attr"):
        assert f"sizeof(struct {sname})" in rep.compared, sname
    if rep.skipped:
        pytest.skip(f"{len(rep.skipped)} values absent from the installed {rep.linux_version} "
                    "headers, skipped by name:\n    " + "\n    ".join(rep.skip_summary()))
