#!/bin/busybox sh
# /init of the POWER (pseries) test guest: mount, load VFIO, bind edu to vfio-pci, run the
# command from /run/pyvfio/cmd in /src, send results and the exit code back over hvc0, power off.
# Protocol (host side: vm/power/runner.py):
#   PYVFIO-READY                       the command is about to start
#   PYVFIO-RESULTS-BEGIN / -END        base64 of a gzipped tar of /results, between these lines
#   PYVFIO-EXIT=<n>                    the command's exit status (last line before power-off)
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /results
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
# Kernel messages would interleave with the protocol lines on the same console.
echo 1 > /proc/sys/kernel/printk

fail() { echo "PYVFIO-INIT-ERROR: $*"; dmesg | tail -n 30; echo "PYVFIO-EXIT=125"; poweroff -f; }

while read -r m; do
    insmod "/lib/modules/pyvfio/$m" || fail "insmod $m"
done < /lib/modules/pyvfio/order

EDU_BDF= EDU_GROUP=
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ] || continue
    EDU_BDF=${d##*/}
    echo vfio-pci > "$d/driver_override"
    echo "$EDU_BDF" > /sys/bus/pci/drivers_probe
    EDU_GROUP=$(basename "$(readlink "$d/iommu_group")")
    break
done
if [ -n "$EDU_BDF" ]; then
    i=0
    while [ ! -e "/dev/vfio/$EDU_GROUP" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
    [ -e "/dev/vfio/$EDU_GROUP" ] || fail "/dev/vfio/$EDU_GROUP did not appear after binding $EDU_BDF"
fi
export PYVFIO_GUEST=power PYVFIO_RESULTS=/results PYVFIO_EDU_BDF="$EDU_BDF" PYVFIO_EDU_GROUP="$EDU_GROUP"
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONPATH=/src
[ -f /run/pyvfio/env ] && . /run/pyvfio/env

cd /src
echo PYVFIO-READY
sh /run/pyvfio/cmd
rc=$?

dmesg > /results/dmesg.txt 2>/dev/null
echo PYVFIO-RESULTS-BEGIN
(cd /results && tar cf - . | gzip -1 | base64)
echo PYVFIO-RESULTS-END
echo "PYVFIO-EXIT=$rc"
sync
poweroff -f
