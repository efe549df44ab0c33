#!/bin/sh
# /init of circuit's VM test tier. hack/vmtest.sh copies this file into the
# initramfs as /init; it runs as PID 1 inside qemu, under /bin/sh (dash),
# with busybox providing most commands.
#
# Stage 1 (on the kernel's initial rootfs): bind-mount / onto itself and
#   chroot into that mount. pivot_root(2), which runc uses, refuses to work
#   while / is the initial rootfs, so runc containers need this.
# Stage 2: mount the usual filesystems, load kernel modules, run every test
#   binary under /vmtest/tests, print the results and power off.
#
# Console protocol read by hack/vmtest.sh (each tag starts a line):
#   VMTEST-MODULES <loaded> <failed> [failed names...]
#   VMTEST-BEGIN <name>
#   VMTEST-RESULT <name> <exit status>
#   VMTEST-DONE <binaries run> <binaries failed>

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
umask 022

if [ "$1" != stage2 ]; then
	# The initramfs has no /dev/console node (making one would need root on
	# the host): mount devtmpfs and point stdio at the serial console.
	mkdir -p /dev /newroot
	mount -t devtmpfs devtmpfs /dev
	exec </dev/console >/dev/console 2>&1
	echo # the firmware may have left the cursor mid-line
	# Bind-mount the rootfs onto itself and chroot into that mount: / is then
	# an ordinary mount (one with a parent), which pivot_root accepts; no
	# copying needed.
	mount --bind / /newroot
	mount --move /dev /newroot/dev
	cd /newroot || poweroff -f
	mount --move . /
	# shellcheck disable=SC2093 # the lines after it run only if exec fails
	exec chroot . /init stage2
	echo "vmtest: cannot chroot into the new root"
	poweroff -f
fi

# ---- stage 2 ---------------------------------------------------------------

# Nothing below exits: if PID 1 died, the kernel would panic and reboot (qemu
# -no-reboot then quits); the host treats a missing VMTEST-DONE as a failure.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm /dev/mqueue
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t mqueue mqueue /dev/mqueue 2>/dev/null
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
# /var/run is a symlink to /run in the image, so /var/run/netns == /run/netns.
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /run/netns /run/lock /run/runc
mount -t bpf bpf /sys/fs/bpf 2>/dev/null

# Keep kernel chatter (module notices, IPVS messages) off the console so that
# it does not interleave with test output.
dmesg -n 1

# Settings written by hack/vmtest.sh: VMTEST_RUN, VMTEST_TEST_TIMEOUT,
# VMTEST_CGROUP and any extra exported variables (VMTEST_GUEST_ENV).
# shellcheck disable=SC1091 # generated
. /etc/vmtest/config

# cgroups, for runc: v2 (unified) or v1 (one hierarchy per controller, like
# this project's host machines).
if [ "${VMTEST_CGROUP:-v2}" = v1 ]; then
	mount -t tmpfs -o mode=0755 cgroup /sys/fs/cgroup
	for c in $(awk 'NR > 1 && $4 == 1 { print $1 }' /proc/cgroups); do
		mkdir -p "/sys/fs/cgroup/$c"
		mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c" ||
			echo "vmtest: cannot mount cgroup v1 controller $c"
	done
else
	mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup ||
		echo "vmtest: cannot mount cgroup2"
fi

hostname vmtest
ip link set lo up

# Kernel modules, in the order of /etc/vmtest/modules. One modprobe call
# loads them all (a modprobe per module costs seconds under TCG); only if it
# fails are they tried one by one, to name the ones that do not load. A
# failure is reported and skipped; the kernel can still auto-load on demand.
mods=$(awk '$1 !~ /^#/ && NF { print $1 }' /etc/vmtest/modules)
loaded=0
nfailed=0
failed=
# shellcheck disable=SC2086 # one word per module
if modprobe -a $mods 2>/dev/null; then
	loaded=$(echo "$mods" | wc -w)
else
	for m in $mods; do
		if out=$(modprobe "$m" 2>&1); then
			loaded=$((loaded + 1))
		else
			echo "vmtest: module $m failed to load: $out"
			nfailed=$((nfailed + 1))
			failed="$failed $m"
		fi
	done
fi
echo "VMTEST-MODULES $loaded $nfailed$failed"
echo "vmtest: guest ready after $(cut -d' ' -f1 /proc/uptime)s of uptime ($loaded modules loaded, $nfailed failed)"
[ -e /proc/net/ip_vs ] || echo "vmtest: warning: no /proc/net/ip_vs (IPVS missing)"

# A default route, as on a host: a connection
# to a service address that only an IPVS or nftables DNAT rule answers needs
# a route before those hooks see the packet. The VM has no NIC: eth0 is a
# dummy link, and what it "sends" is dropped.
ip link add eth0 type dummy &&
	ip addr add 10.199.255.2/24 dev eth0 &&
	ip link set eth0 up &&
	ip route add default via 10.199.255.1 ||
	echo "vmtest: cannot set up the dummy eth0 and its default route"

# Environment of the test binaries.
export CIRCUIT_TEST_VM=1
export CIRCUIT_TEST_CNI_PATH=/opt/cni/bin
export CIRCUIT_TEST_BIN=/usr/local/bin/circuit
export CIRCUIT_TEST_AGENT=/usr/local/bin/circuit-agent
export CIRCUIT_TEST_BUSYBOX=/bin/busybox
export HOME=/root
export TMPDIR=/tmp
cd /root || true

ran=0
bad=0
for t in /vmtest/tests/*.test; do
	[ -x "$t" ] || continue
	name=${t##*/}
	name=${name%.test}
	# Each binary runs from its own writable directory holding its package's
	# testdata/ (if any), as `go test` would run it from the package directory.
	dir=/vmtest/pkgs/$name
	mkdir -p "$dir"
	echo "VMTEST-BEGIN $name"
	(
		cd "$dir" &&
			exec "$t" -test.v -test.count=1 \
				-test.timeout="${VMTEST_TEST_TIMEOUT:-10m}" \
				${VMTEST_RUN:+-test.run="$VMTEST_RUN"}
	) </dev/null 2>&1
	rc=$?
	ran=$((ran + 1))
	[ "$rc" -eq 0 ] || bad=$((bad + 1))
	# A test's last line may lack a newline: start the tag on a fresh line.
	echo
	echo "VMTEST-RESULT $name $rc"
done

echo "VMTEST-DONE $ran $bad"
echo "vmtest: guest done after $(cut -d' ' -f1 /proc/uptime)s of uptime"
sync
poweroff -f
