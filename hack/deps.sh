#!/usr/bin/env bash
# Installs, from Debian's packages, what circuit's tests and demo use. It
# only calls apt-get when something is missing.
set -euo pipefail

want=(runc busybox-static time iproute2 iputils-ping iperf3 nftables iptables util-linux kmod cpio qemu-system-x86 curl etcd-server strace)
missing=()
for p in "${want[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# qemu is only for the VM tier: its absence is reported there, not here.
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || {
		apt-get install -y -qq --no-install-recommends "${missing[@]/qemu-system-x86/}" >/dev/null
	}
fi
