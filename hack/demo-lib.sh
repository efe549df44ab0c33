# Helpers shared by hack/demo.sh and hack/demo-cluster.sh; sourced, not run.
# Both expect $work, the demo's temporary directory.

# show prints a command as typed, then runs it.
show() { printf '\n$> %s\n' "$*"; "$@"; }

# bundle makes a busybox rootfs bundle under $work running an httpd that
# names its container, and prints its directory.
bundle() {
	local id=$1 dir=$work/$1
	mkdir -p "$dir/rootfs/bin" "$dir/rootfs/www" "$dir/rootfs/proc" "$dir/rootfs/sys" "$dir/rootfs/dev" "$dir/rootfs/etc"
	cp /bin/busybox "$dir/rootfs/bin/busybox"
	for a in sh sleep ping ip httpd wget cat; do ln -sf busybox "$dir/rootfs/bin/$a"; done
	echo "hello from $id" >"$dir/rootfs/www/index.html"
	(cd "$dir" && runc spec)
	sed -i -e 's/"terminal": true/"terminal": false/' \
		-e 's|"sh"|"httpd", "-f", "-p", "80", "-h", "/www"|' \
		-e 's/"CAP_AUDIT_WRITE",/"CAP_AUDIT_WRITE", "CAP_NET_RAW",/g' "$dir/config.json"
	echo "$dir"
}
