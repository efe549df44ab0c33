#!/usr/bin/env bash
# The seed's walkthrough, for real: a CNI network, a busybox runc container
# connected to it, QoS, a load-balanced service, a published port; then
# hack/demo-cluster.sh: two nodes (network namespaces), one etcd and a
# circuit-agent per node, a cluster network over VXLAN, and a container on
# node1 pinging and fetching the page of one on node2. Everything is removed
# again. Each command is printed as a person would type it, with its output.
# Uses its own state dirs (CIRCUIT_STATE), bridges and etcd, so nothing else
# on the host changes; the containers are web-00 and web-01 (then web-n1 and
# web-n2) under runc's default root.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PATH=$root/bin:$PATH
work=$(mktemp -d /tmp/circuit-demo.XXXXXX)
export CIRCUIT_STATE=$work/state CNI_PATH=$root/bin/cni
RUNC=runc
bridge=cdemo0
webbridge=cdemo1

cleanup() {
	set +e
	$RUNC kill web-00 KILL >/dev/null 2>&1
	$RUNC kill web-01 KILL >/dev/null 2>&1
	sleep 0.2
	$RUNC delete -f web-00 >/dev/null 2>&1
	$RUNC delete -f web-01 >/dev/null 2>&1
	circuit lb delete demo >/dev/null 2>&1
	circuit network delete --force sandbox >/dev/null 2>&1
	circuit network delete --force web >/dev/null 2>&1
	ip link del "$bridge" >/dev/null 2>&1
	ip link del "$webbridge" >/dev/null 2>&1
	for p in "$work"/state/netns/*; do [ -e "$p" ] && umount -l "$p" 2>/dev/null; done
	rm -rf "$work"
}
trap cleanup EXIT

. "$root/hack/demo-lib.sh"

[ "$(id -u)" = 0 ] || { echo "demo: run as root (circuit changes network namespaces)"; exit 1; }
for id in web-00 web-01; do
	if runc state "$id" >/dev/null 2>&1; then echo "demo: a runc container named $id exists already; not touching it"; exit 1; fi
done

cat >"$work/sandbox.conf" <<CONF
{
    "cniVersion": "0.2.0",
    "name": "sandbox",
    "type": "bridge",
    "bridge": "$bridge",
    "ipMasq": true,
    "isGateway": true,
    "ipam": {
        "type": "host-local",
        "subnet": "10.254.1.0/24",
        "dataDir": "$work/ipam",
        "routes": [
            {
                "dst": "0.0.0.0/0"
            }
        ]
    }
}
CONF

echo "# circuit demo (state in $CIRCUIT_STATE)"
show cat "$work/sandbox.conf"
show circuit network create "$work/sandbox.conf"
show circuit network list

$RUNC run -d --bundle "$(bundle web-00)" web-00 >/dev/null
$RUNC run -d --bundle "$(bundle web-01)" web-01 >/dev/null
show $RUNC list
pid=$($RUNC state web-00 | sed -n 's/.*"pid": \([0-9]*\).*/\1/p')

show circuit network connect "$pid" sandbox
show circuit network connect web-01 sandbox
show circuit network list
show $RUNC exec web-00 ping -c 3 10.254.1.1

if circuit network qos --help >/dev/null 2>&1; then
	show circuit network qos set --rate 5000 --ceiling 6000 sandbox
	show circuit network qos show sandbox
	if ! show circuit network qos set --delay 50ms sandbox; then
		echo "(this kernel has no netem: the delay is refused and nothing changed; the VM tier proves it on Debian's kernel)"
	fi
	show circuit network qos reset sandbox
fi

if circuit lb --help >/dev/null 2>&1; then
	ips=$(circuit network list --format '{{range .Peers}}{{range .IPs}}{{.}} {{end}}{{end}}' | sed 's|/[0-9]*||g')
	show circuit lb create demo 10.254.2.10:80
	for ip in $ips; do show circuit lb add demo "$ip:80"; done
	show circuit lb list --details
	for i in 1 2 3 4; do show curl -s -m 5 http://10.254.2.10/; done
	show circuit lb show demo
	show circuit lb delete demo
fi

# Publishing a port: a chain with portmap, and a fixed address.
cat >"$work/web.conflist" <<CONF
{
    "cniVersion": "1.0.0",
    "name": "web",
    "plugins": [
        {
            "type": "bridge",
            "bridge": "$webbridge",
            "isGateway": true,
            "ipMasq": true,
            "capabilities": {"ips": true, "mac": true},
            "ipam": {
                "type": "host-local",
                "subnet": "10.254.3.0/24",
                "dataDir": "$work/ipam",
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        },
        {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
    ]
}
CONF
show cat "$work/web.conflist"
show circuit network create "$work/web.conflist"
show circuit network connect --publish 8080:80 --ip 10.254.3.10 web-00 web
show curl -s -m 5 http://10.254.3.1:8080/
show circuit network disconnect web-00 web
if curl -s -m 2 http://10.254.3.1:8080/ >/dev/null; then echo "demo: port 8080 still answers after disconnect"; exit 1; fi
show circuit network delete web

show circuit network disconnect "$pid" sandbox
show circuit network disconnect web-01 sandbox
show circuit network delete sandbox

# Many hosts: two nodes, each its own network namespace, state and agent.
"$root/hack/demo-cluster.sh"
echo
echo "# demo done: containers, networks, bridges, nodes, etcd and state are removed on exit"
