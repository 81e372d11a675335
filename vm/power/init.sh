#!/bin/busybox sh
# /init of the POWER (pseries) test guest: mount, load the VFIO modules, then hand over to the
# test bed's agent (vm/agent.py, shared with the x86 guests) which binds edu to vfio-pci, writes
# /results/guest-info.json, runs the job from /run/pyvfio/job.json and writes /results/exit_code.
# Everything returns over hvc0 (no 9p with x-vof); protocol read by vm/power/runner.py:
#   PYVFIO-RESULTS-BEGIN / -END        base64 of a gzipped tar of /results, between these lines
#   PYVFIO-EXIT=<n>                    the job's exit status (last line before power-off)
#   PYVFIO-INIT-ERROR: <why>           /init itself failed (followed by PYVFIO-EXIT=125)
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /results
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
# Kernel messages would interleave with the protocol lines on the same console.
echo 1 > /proc/sys/kernel/printk

send_results() {
    dmesg > /results/dmesg.txt 2>/dev/null
    echo PYVFIO-RESULTS-BEGIN
    (cd /results && tar cf - . | gzip -1 | base64)
    echo PYVFIO-RESULTS-END
}
fail() {
    echo "PYVFIO-INIT-ERROR: $*"
    dmesg | tail -n 30
    send_results
    echo "PYVFIO-EXIT=125"
    poweroff -f
}

moddir=/lib/modules/$(uname -r)
while read -r m; do
    insmod "$moddir/$m" || fail "insmod $m"
done < "$moddir/pyvfio.order"

[ -f /src/vm/agent.py ] || fail "no /src/vm/agent.py in the payload"
python3 -I -S /src/vm/agent.py /run/pyvfio/job.json || fail "vm/agent.py exited $?"
[ -f /results/exit_code ] || fail "vm/agent.py wrote no exit_code"
rc=$(cat /results/exit_code)
send_results
echo "PYVFIO-EXIT=$rc"
sync
poweroff -f
