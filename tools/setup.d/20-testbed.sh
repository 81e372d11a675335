#!/usr/bin/env bash
# QEMU guest test bed (vm/): QEMU 7.2 for x86 (bookworm), static busybox, kmod, cpio, and the
# pinned guest kernel (vm/kernel.py KERNELS) fetched with a private apt config into
# ~/.cache/pyvfio/kernels/ (never installed on the host). Idempotent, quiet when already done.
#
# QEMU stays at bookworm's 7.2: qemu-system-x86 from backports (10.0) would drag
# qemu-system-common/-data to 10.0 too, which bookworm's qemu-system-ppc (7.2, the POWER guest)
# cannot share; 7.2 has everything the x86 bed needs (intel/amd/virtio-iommu, edu, e1000e, nvme).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=/dev/null
. "$ROOT/tools/lib/apt.sh"
apt_install qemu-system-x86 busybox-static kmod cpio xz-utils zstd
cd "$ROOT"
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; from vm.kernel import cached_kernel; sys.exit(cached_kernel("amd64") is None)'; then
    "$PY" -m vm fetch-kernel --arch amd64 >/dev/null
fi
# The iommufd guest kernel (vm/build_kernel.py): about 12 min at -j2, so built only under CI (or
# when asked with PYVFIO_BUILD_IOMMUFD_KERNEL=1) and cached by its config fragment's hash.  A
# failed build does not stop setup: iommufd guest tests then fail (CI) or skip, naming the cause.
if ! "$PY" -c 'import sys; from vm.build_kernel import cached_iommufd_kernel; sys.exit(cached_iommufd_kernel() is None)'; then
    if [ "${CI:-}" = true ] || [ "${PYVFIO_BUILD_IOMMUFD_KERNEL:-}" = 1 ]; then
        apt_install gcc make flex bison bc libelf-dev libssl-dev
        "$PY" -m vm build-kernel >/dev/null || echo "setup: iommufd kernel build failed (see above)" >&2
    fi
fi
