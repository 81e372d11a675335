#!/usr/bin/env bash
# uAPI layer proof: host C compiler, the ppc64le cross toolchain + qemu-user to run its probe,
# and the pinned linux-libc-dev 6.12 header set (tools/uapi/fetch-headers). Idempotent, quiet
# when already done.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=/dev/null
. "$ROOT/tools/lib/apt.sh"
apt_install gcc libc6-dev linux-libc-dev gcc-powerpc64le-linux-gnu libc6-dev-ppc64el-cross \
    qemu-user-static
"$ROOT/tools/uapi/fetch-headers" >/dev/null
