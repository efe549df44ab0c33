#!/usr/bin/env bash
# The VM test tier: run circuit's Go test binaries under Debian's stock kernel
# (which has IPVS, netem, ipvlan, dummy, ... as modules) inside qemu, for what
# the host kernel lacks. See hack/vm/README.md.
#
#   hack/vmtest.sh                      # every package with tests
#   VMTEST_PKGS=./pkg/lb/... VMTEST_RUN='TestIPVS' hack/vmtest.sh
#
# The last line of output is `vmtest: N passed, M failed[, K skipped]`; the
# exit status is 0 only when nothing failed, every test binary exited 0 and
# the guest finished in time.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
vmdir=$repo/hack/vm

# ---- settings (environment) ------------------------------------------------
cache=${VMTEST_CACHE:-$repo/hack/.cache/vm} # kernel cache + work dir
pkgs=${VMTEST_PKGS:-./...}                  # packages to test; "none" for none
run_re=${VMTEST_RUN:-}                      # -test.run regex
extra_tests=${VMTEST_EXTRA_TESTS:-}         # dir of prebuilt *.test binaries
circuit_bin=${VMTEST_CIRCUIT_BIN:-}         # prebuilt circuit binary to use
vm_timeout=${VMTEST_TIMEOUT:-1800}          # seconds for the whole guest run
test_timeout=${VMTEST_TEST_TIMEOUT:-15m}    # -test.timeout of each binary
cgroup=${VMTEST_CGROUP:-v2}                 # v2 or v1 inside the guest
guest_env=${VMTEST_GUEST_ENV:-}             # extra K=V (space separated)
mem=${VMTEST_MEM:-1536}                     # guest memory, MiB
smp=${VMTEST_SMP:-2}                        # guest CPUs
qemu_extra=${VMTEST_QEMU_ARGS:-}            # extra qemu arguments
keep=${VMTEST_KEEP:-0}                      # 1: keep the initramfs tree and binaries

export CGO_ENABLED=0
export DEBIAN_FRONTEND=noninteractive

t0=$(date +%s)
log() { echo "vmtest: [$(($(date +%s) - t0))s] $*" >&2; }

# Print a loud banner on stderr.
shout() {
	{
		echo "######################################################################"
		for l in "$@"; do echo "## $l"; done
		echo "######################################################################"
	} >&2
}

# A failure before any test could run still ends with the summary line.
fail_early() {
	log "$*"
	echo "vmtest: 0 passed, 1 failed"
	exit 1
}

# The VM cannot run here (no qemu, no kernel): fail loudly unless SKIP_VM=1.
vm_unavailable() {
	shout "VM TEST TIER UNAVAILABLE: $*" \
		"IPVS/netem/ipvlan/dummy tests did NOT run." \
		"Set SKIP_VM=1 to skip the VM tier on purpose."
	if [[ ${SKIP_VM:-} == 1 ]]; then
		echo "vmtest: skipped (SKIP_VM=1)"
		exit 0
	fi
	fail_early "VM tier unavailable: $*"
}

# ---- host packages -----------------------------------------------------------
apt_updated=0
apt_update_once() {
	if [[ $apt_updated == 0 ]]; then
		log "apt-get update"
		apt-get update -qq >&2 || log "apt-get update failed"
		apt_updated=1
	fi
}

# apt_install PKG...: install the packages that are not installed yet.
apt_install() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' ||
			missing+=("$p")
	done
	((${#missing[@]})) || return 0
	if [[ $(id -u) != 0 ]]; then
		log "not root: cannot install ${missing[*]}"
		return 1
	fi
	apt_update_once
	log "apt-get install ${missing[*]}"
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# qemu is the one thing without which the tier cannot run at all.
if ! command -v qemu-system-x86_64 >/dev/null; then
	apt_install qemu-system-x86 || true
	command -v qemu-system-x86_64 >/dev/null ||
		vm_unavailable "qemu-system-x86_64 is missing and could not be installed"
fi
# Tools to build the initramfs, and the tools the tests use inside the VM.
apt_install kmod cpio busybox-static iproute2 nftables iptables ipvsadm \
	iputils-ping iperf3 ||
	fail_early "could not install the packages the VM tier needs"

# ---- the kernel: Debian's stock one, cached ---------------------------------
# The package that linux-image-amd64 depends on, e.g. linux-image-6.1.0-56-amd64.
kernel_pkg() {
	apt-cache depends linux-image-amd64 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'
}

# kernel_dir: print the cache directory of an unpacked kernel, fetching it if
# needed. A cached kernel is reused; apt is only asked when nothing usable is
# cached for the package linux-image-amd64 currently resolves to.
kernel_dir() {
	local pkg dir tmp
	pkg=$(kernel_pkg)
	if [[ -z $pkg ]] && ! compgen -G "$cache/kernel/*/.done" >/dev/null; then
		apt_update_once
		pkg=$(kernel_pkg)
	fi
	if [[ -z $pkg ]]; then
		# No apt lists: use the newest cached kernel, if any.
		dir=$(ls -d "$cache"/kernel/*/.done 2>/dev/null | sort -V | tail -1)
		[[ -n $dir ]] || return 1
		dirname "$dir"
		return 0
	fi
	dir=$cache/kernel/$pkg
	if [[ ! -e $dir/.done ]]; then
		log "downloading $pkg"
		tmp=$(mktemp -d "$cache/kernel/.dl.XXXXXX")
		if ! (cd "$tmp" && apt-get download -q "$pkg" >&2); then
			apt_update_once
			(cd "$tmp" && apt-get download -q "$pkg" >&2) || {
				rm -rf "$tmp"
				return 1
			}
		fi
		rm -rf "$dir"
		dpkg-deb -x "$tmp"/*.deb "$tmp/x"
		mv "$tmp/x" "$dir"
		rm -rf "$tmp"
		touch "$dir/.done"
		# Drop the kernels this one replaces.
		find "$cache/kernel" -mindepth 1 -maxdepth 1 -type d -name 'linux-image-*' \
			! -name "$pkg" -exec rm -rf {} +
	fi
	echo "$dir"
}

mkdir -p "$cache/kernel"
# Runs may happen side by side (several people share a tree): one fetches the
# kernel while the others wait for it.
exec {kernel_lock}>"$cache/kernel/.lock"
flock "$kernel_lock"
kdir=$(kernel_dir) || vm_unavailable "cannot download Debian's kernel (linux-image-amd64)"
flock -u "$kernel_lock"
vmlinuz=$(ls "$kdir"/boot/vmlinuz-* | head -1)
kver=${vmlinuz##*/vmlinuz-}
log "kernel $kver ($kdir)"

# ---- Go binaries -------------------------------------------------------------
# Each run gets its own work dir under $cache/runs (side-by-side runs do not
# collide); only the newest few are kept, and of those only the logs unless
# VMTEST_KEEP=1.
mkdir -p "$cache/runs"
work=$(mktemp -d "$cache/runs/$(date +%Y%m%d-%H%M%S).XXXX")
ls -d "$cache"/runs/*/ 2>/dev/null | sort | head -n -5 | xargs -r rm -rf
# shellcheck disable=SC2317 # called by the trap
cleanup() {
	if [[ $keep != 1 ]]; then
		rm -rf "${work:?}"/{root,bin,cni,tests,testdata,initrd.gz,vmlinuz}
	fi
}
trap cleanup EXIT
mkdir -p "$work"/{bin,cni,tests,testdata}
build_failures=() # packages (or binaries) that did not build

cd "$repo"
if [[ -n $circuit_bin ]]; then
	cp "$circuit_bin" "$work/bin/circuit"
else
	log "building circuit"
	go build -ldflags='-s -w' -o "$work/bin/circuit" . ||
		fail_early "the circuit binary does not build (go build .); VMTEST_CIRCUIT_BIN=FILE uses a prebuilt one"
fi

log "building circuit-agent"
go build -ldflags='-s -w' -o "$work/bin/circuit-agent" ./circuit-agent ||
	fail_early "circuit-agent does not build (go build ./circuit-agent)"

log "building the CNI plugins"
(cd hack/cni && go build -ldflags='-s -w' -o "$work/cni/" tool) ||
	fail_early "the CNI plugins do not build (cd hack/cni && go build tool)"

# testbin_name IMPORTPATH: the binary's name, its path inside the module with
# '/' turned into '_' (the module root itself is "circuit").
modpath=$(go list -m)
testbin_name() {
	local p=${1#"$modpath"}
	p=${p#/}
	p=${p//\//_}
	echo "${p:-circuit}"
}

if [[ $pkgs != none ]]; then
	# shellcheck disable=SC2086 # word splitting of the package patterns
	list=$(go list -e \
		-f '{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}} {{.Dir}}{{end}}' $pkgs) ||
		fail_early "go list $pkgs failed"
	mapfile -t test_pkgs <<<"$list"
	for line in "${test_pkgs[@]}"; do
		[[ -n $line ]] || continue
		pkg=${line%% *}
		dir=${line#* }
		name=$(testbin_name "$pkg")
		log "building test binary $name ($pkg)"
		if ! go test -c -ldflags='-s -w' -o "$work/tests/$name.test" "$pkg" >&2; then
			build_failures+=("$name")
			continue
		fi
		if [[ -d $dir/testdata ]]; then
			mkdir -p "$work/testdata/$name"
			cp -a "$dir/testdata" "$work/testdata/$name/"
		fi
	done
fi
if [[ -n $extra_tests ]]; then
	for t in "$extra_tests"/*.test; do
		[[ -x $t ]] || continue
		cp "$t" "$work/tests/"
	done
fi
test_bins=()
for t in "$work"/tests/*.test; do
	if [[ -e $t ]]; then test_bins+=("$(basename "$t" .test)"); fi
done
log "${#test_bins[@]} test binaries, ${#build_failures[@]} failed to build"

# ---- the initramfs -----------------------------------------------------------
root=$work/root
mkdir -p "$root"/usr/{bin,sbin,lib,lib64,local/bin,local/sbin}
# A merged-/usr layout, as on Debian 12.
for d in bin sbin lib lib64; do ln -s "usr/$d" "$root/$d"; done
mkdir -p "$root"/{dev,proc,sys,run,tmp,root,etc/vmtest,var/lib,opt/cni/bin} \
	"$root"/vmtest/{tests,pkgs}
ln -s ../run "$root/var/run"
ln -s ../tmp "$root/var/tmp"
chmod 1777 "$root/tmp"

# busybox-static and its applets as symlinks (real tools copied below win).
cp /bin/busybox "$root/usr/bin/busybox"
while read -r applet; do
	[[ $applet == */* ]] || continue
	[[ -e $root/$applet || -L $root/$applet ]] && continue
	ln -s /usr/bin/busybox "$root/$applet"
done < <(/bin/busybox --list-full)

# copy_libs FILE...: copy the shared libraries (and the ELF interpreter) that
# FILE needs, as ldd resolves them on this host, to the same paths in $root.
declare -A copied_libs=()
copy_libs() {
	local f lib
	for f in "$@"; do
		while read -r lib; do
			[[ -n $lib && -z ${copied_libs[$lib]:-} ]] || continue
			copied_libs[$lib]=1
			mkdir -p "$root$(dirname "$lib")"
			cp -L "$lib" "$root$lib"
		done < <(ldd "$f" 2>/dev/null |
			awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
	done
}

# copy_tool SRC DEST: copy a host executable (following symlinks) and its
# libraries; DEST is the path inside the VM.
copy_tool() {
	local d
	# Drop busybox applets of the same name, wherever they are on PATH.
	for d in usr/bin usr/sbin; do
		if [[ -L $root/$d/${2##*/} ]]; then rm -f "$root/$d/${2##*/}"; fi
	done
	rm -f "$root$2"
	mkdir -p "$root$(dirname "$2")"
	cp -L "$1" "$root$2"
	copy_libs "$1"
}

# Required tools: the tests inspect the kernel with these.
for t in ip tc bridge ss nft ipvsadm; do
	p=$(command -v "$t") || fail_early "$t not found on the host"
	copy_tool "$p" "/usr/sbin/$t"
done
for t in ping iperf3; do
	p=$(command -v "$t") || fail_early "$t not found on the host"
	copy_tool "$p" "/usr/bin/$t"
done
# Debian's busybox-static runs its own applet whenever it (or its shell) runs
# a command by name: `sh -c 'tc ...'`, `nsenter ... ip ...` or `env tc` would
# get busybox's tc and ip, not iproute2's. So /bin/sh is dash, and the usual
# commands that run other commands are the host's real ones, as on a host.
copy_tool "$(command -v dash)" /usr/bin/dash
rm -f "$root/usr/bin/sh"
ln -s dash "$root/usr/bin/sh"
for t in bash env timeout nohup chroot nice xargs nsenter unshare setsid flock taskset; do
	if p=$(command -v "$t"); then
		copy_tool "$p" "$p"
	else
		log "warning: $t not found on the host; the VM uses busybox's"
	fi
done
# kmod provides modprobe (also the kernel's request_module helper), depmod...
copy_tool "$(command -v kmod)" /usr/bin/kmod
for t in modprobe insmod rmmod lsmod modinfo depmod; do
	ln -sf ../bin/kmod "$root/usr/sbin/$t"
done
# iptables: both backends, with iptables pointing at the one the host uses.
ipt_default=$(basename "$(readlink -f "$(command -v iptables)")") # xtables-nft-multi or ...-legacy-multi
for m in xtables-nft-multi xtables-legacy-multi; do
	if [[ -x /usr/sbin/$m ]]; then copy_tool "/usr/sbin/$m" "/usr/sbin/$m"; fi
done
for v in iptables ip6tables; do
	for s in "" -save -restore; do
		ln -sf "$ipt_default" "$root/usr/sbin/$v$s"
		ln -sf xtables-nft-multi "$root/usr/sbin/$v-nft$s"
		ln -sf xtables-legacy-multi "$root/usr/sbin/$v-legacy$s"
	done
done
# Data and plugin directories of iptables (extensions) and tc (netem tables).
for d in /usr/lib/x86_64-linux-gnu/xtables /usr/lib/x86_64-linux-gnu/tc /etc/iproute2; do
	if [[ -d $d ]]; then
		mkdir -p "$root$(dirname "$d")"
		cp -a "$d" "$root$d"
		[[ $d == /etc/* ]] || copy_libs "$d"/*.so
	fi
done
for f in /etc/protocols /etc/services /etc/ethertypes; do
	if [[ -f $f ]]; then cp "$f" "$root$f"; fi
done
# Optional tools: copied when the host has them.
for t in runc curl conntrack ethtool etcd; do
	if p=$(command -v "$t"); then
		copy_tool "$p" "/usr/sbin/$t"
	fi
done

# Minimal /etc.
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
echo vmtest >"$root/etc/hostname"
: >"$root/etc/resolv.conf"

# Kernel modules: the network-related trees only (not NIC/wireless drivers),
# then depmod so that modprobe and the kernel's auto-loading find them.
msrc=$kdir/lib/modules/$kver
mdst=$root/lib/modules/$kver
mkdir -p "$mdst"
cp "$msrc"/modules.order "$msrc"/modules.builtin* "$mdst/"
(cd "$msrc" && tar -cf - \
	--exclude=kernel/drivers/net/{wireless,ethernet,usb,can,wwan,ieee802154,hamradio,arcnet,fddi,wan,plip} \
	--exclude=kernel/net/{bluetooth,wireless,mac80211,mac802154,ieee802154,nfc,can,ceph,sunrpc,rxrpc,9p} \
	kernel/net kernel/drivers/net kernel/lib kernel/crypto kernel/arch/x86/crypto) |
	(cd "$mdst" && tar -xf -)
depmod -b "$root" "$kver"

# The binaries under test.
cp "$work/bin/circuit" "$root/usr/local/bin/circuit"
cp "$work/bin/circuit-agent" "$root/usr/local/bin/circuit-agent"
cp "$work"/cni/* "$root/opt/cni/bin/"
if ((${#test_bins[@]})); then
	cp "$work"/tests/*.test "$root/vmtest/tests/"
fi
cp -a "$work/testdata/." "$root/vmtest/pkgs/"

# /init, its module list and its settings.
install -m 0755 "$vmdir/init.sh" "$root/init"
cp "$vmdir/modules.txt" "$root/etc/vmtest/modules"
{
	printf 'VMTEST_RUN=%q\n' "$run_re"
	printf 'VMTEST_TEST_TIMEOUT=%q\n' "$test_timeout"
	printf 'VMTEST_CGROUP=%q\n' "$cgroup"
	for kv in $guest_env; do
		printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
	done
} >"$root/etc/vmtest/config"

log "packing the initramfs"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
	cpio --quiet -o -H newc -R 0:0) | gzip -1 >"$work/initrd.gz"
cp "$vmlinuz" "$work/vmlinuz"
log "initramfs: $(du -h "$work/initrd.gz" | cut -f1) ($(du -sh "$root" | cut -f1) unpacked)"

# ---- boot it -----------------------------------------------------------------
log "booting Debian's kernel $kver in qemu (TCG, timeout ${vm_timeout}s)"
start=$(date +%s)
set +e
# shellcheck disable=SC2086 # VMTEST_QEMU_ARGS is split into words
timeout -k 10 "$vm_timeout" qemu-system-x86_64 \
	-accel tcg -cpu max -m "$mem" -smp "$smp" \
	-kernel "$work/vmlinuz" -initrd "$work/initrd.gz" \
	-append "console=ttyS0 quiet loglevel=3 panic=-1" \
	-nographic -nic none -no-reboot $qemu_extra </dev/null |
	sed -u -e 's/\r//g' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1bc//g' |
	tee "$work/console.log"
# (sed drops the CRs and the firmware's terminal escapes, such as "reset".)
# timeout(1) exits 124 (137 after its -k kill) when the guest ran out of time.
qemu_rc=${PIPESTATUS[0]}
set -e
elapsed=$(($(date +%s) - start))

# ---- results -----------------------------------------------------------------
# Top-level tests only: their "--- PASS/FAIL/SKIP: TestX" lines start at
# column 0 (subtests are indented).
passed=$(grep -c '^--- PASS: ' "$work/console.log" || true)
failed=$(grep -c '^--- FAIL: ' "$work/console.log" || true)
skipped=$(grep -c '^--- SKIP: ' "$work/console.log" || true)

echo
echo "==================== vmtest results (guest ran ${elapsed}s) ===================="
mods=$(grep -m1 '^VMTEST-MODULES ' "$work/console.log" || true)
[[ -z $mods ]] || echo "modules: $(awk '{ printf "%d loaded, %d failed", $2, $3; for (i = 4; i <= NF; i++) printf " %s", $i }' <<<"$mods")"

bad_bins=0 # binaries that exited non-zero, did not finish, or did not build
for name in "${test_bins[@]}"; do
	rc=$(awk -v n="$name" '$1 == "VMTEST-RESULT" && $2 == n { print $3 }' "$work/console.log")
	# FAIL lines of this binary: those between its BEGIN and RESULT tags.
	nfail=$(awk -v n="$name" '
		$1 == "VMTEST-BEGIN" { in_pkg = ($2 == n) }
		in_pkg && /^--- FAIL: / { c++ }
		END { print c + 0 }' "$work/console.log")
	if [[ -z $rc ]]; then
		echo "FAIL   $name (did not finish)"
		bad_bins=$((bad_bins + 1))
		# Count it unless its failed tests already are.
		((nfail)) || failed=$((failed + 1))
	elif [[ $rc != 0 ]]; then
		echo "FAIL   $name (exit $rc)"
		bad_bins=$((bad_bins + 1))
		((nfail)) || failed=$((failed + 1)) # a panic, a timeout, a crash ...
	else
		echo "ok     $name"
	fi
done
for name in "${build_failures[@]}"; do
	echo "FAIL   $name (did not build)"
	bad_bins=$((bad_bins + 1))
	failed=$((failed + 1))
done
grep '^--- FAIL: ' "$work/console.log" | sed 's/^/       /' || true

guest_ok=1
if [[ $qemu_rc == 124 || $qemu_rc == 137 ]]; then
	echo "FAIL   the guest timed out after ${vm_timeout}s (VMTEST_TIMEOUT) and was killed"
	guest_ok=0
elif ! grep -q '^VMTEST-DONE ' "$work/console.log"; then
	echo "FAIL   the guest stopped before finishing (qemu exit $qemu_rc)"
	guest_ok=0
fi
if ((!guest_ok && bad_bins == 0)); then
	failed=$((failed + 1))
fi
echo "console log: $work/console.log"

summary="vmtest: $passed passed, $failed failed"
if ((skipped)); then summary+=", $skipped skipped"; fi
echo "$summary"
((failed == 0 && bad_bins == 0 && guest_ok)) || exit 1
exit 0
