#!/bin/busybox sh
# pyvfio guest /init (PID 1 of the initramfs built by vm/initramfs.py).
#
# Mounts the host's / (virtio-9p, read-only) under a tmpfs-backed overlay, bind-mounts the guest
# kernel's module tree over /lib/modules, mounts the read-write results share at the host's path,
# chroots and runs vm/agent.py with the host's python (the agent binds devices, runs the job and
# writes the exit code to the results share), then powers off.  Any failure here prints
# "pyvfio-init: FATAL ..." and powers off without an exit code, which the host reports as a failure.
/bin/busybox --install -s /bin
export PATH=/bin

fatal() { echo "pyvfio-init: FATAL: $*"; sync; poweroff -f; sleep 5; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo 1 > /proc/sys/kernel/panic_on_oops

variant=intel; results=; agent=; python=; modules=; trace=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        pyvfio.variant=*) variant="${arg#*=}" ;;
        pyvfio.results=*) results="${arg#*=}" ;;
        pyvfio.agent=*) agent="${arg#*=}" ;;
        pyvfio.python=*) python="${arg#*=}" ;;
        pyvfio.modules=*) modules="${arg#*=}" ;;
        pyvfio.trace=*) trace="${arg#*=}" ;;
    esac
done
[ "$trace" = 1 ] && set -x

# Modules in dependency order (modules.order written by the builder).  virtio_iommu is listed
# first so that it probes before 9pnet_virtio claims the 9p device behind it.
while read -r m; do
    [ -n "$m" ] && insmod "/modules/$m" 2>/dev/null
done < /modules.order

mkdir -p /lower /rw /newroot
n=0
until mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /lower 2>/dev/null; do
    n=$((n + 1))
    [ $n -gt 100 ] && fatal "cannot mount the host root over virtio-9p"
    usleep 50000
done
mount -t tmpfs -o mode=0755 tmpfs /rw || fatal "tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
    || fatal "overlay mount failed"

R=/newroot
# the whole root is an overlay (writes land in tmpfs), so /tmp keeps the host's content and a
# host cwd under /tmp works; /run starts empty
mount -t tmpfs -o mode=0755 tmpfs "$R/run" 2>/dev/null
mount --move /proc "$R/proc"
mount --move /sys "$R/sys"
mount --move /dev "$R/dev"
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts devpts "$R/dev/pts" 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm" 2>/dev/null
if [ -n "$modules" ] && [ -d "$R$modules" ]; then
    mkdir -p "$R/lib/modules/${modules##*/}"
    mount --bind "$R$modules" "$R/lib/modules/${modules##*/}" || fatal "cannot bind the guest modules"
fi
[ -n "$results" ] || fatal "no pyvfio.results on the kernel command line"
mkdir -p "$R$results"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results "$R$results" \
    || fatal "cannot mount the results share"

chroot "$R" "$python" -I -S "$agent" "$results/job.json"
echo "pyvfio-init: agent exited $?"
sync
umount "$R$results" 2>/dev/null
poweroff -f
sleep 10
