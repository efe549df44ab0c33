#!/usr/bin/env bash
# The multi-node part of `make demo` (hack/demo.sh runs it last; it also runs
# alone, as root, after `make build cni`): two nodes simulated as network
# namespaces on an underlay bridge of their own, one etcd, a circuit-agent
# per node, a cluster network with a VXLAN overlay, and a busybox runc
# container on each node: the node list, the containers' addresses from each
# node's block, a ping and an HTTP fetch from node1's container to node2's.
# Everything it makes is named cdemo-* (or web-n1, web-n2, runc's default
# root) and removed on exit, failure and interrupt included.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. "$root/hack/demo-lib.sh"
export PATH=$root/bin:$PATH CNI_PATH=$root/bin/cni

underlay=cdemo-u0      # the host's bridge the nodes hang on
net=10.252.0           # its /24: the host is .1, node N is .1N
etcd_url=http://$net.1:23771
etcd_peer=http://127.0.0.1:23781
nodes=(node1 node2)    # node N: namespace and host-side veth cdemo-nodeN, container web-nN
limit=20               # seconds anything may take to converge

[ "$(id -u)" = 0 ] || { echo "demo: run as root (circuit changes network namespaces)"; exit 1; }
command -v etcd >/dev/null || { echo "demo: no etcd binary: make deps installs Debian's etcd-server"; exit 1; }
# What a demo killed with SIGKILL left is named, never removed here: another
# demo may be running.
for n in "${nodes[@]}"; do
	if [ -e "/run/netns/cdemo-$n" ]; then echo "demo: network namespace cdemo-$n exists already (another demo running, or one killed: ip netns del cdemo-$n)"; exit 1; fi
	if runc state "web-n${n#node}" >/dev/null 2>&1; then echo "demo: a runc container named web-n${n#node} exists already; not touching it"; exit 1; fi
done
if ip link show "$underlay" >/dev/null 2>&1; then echo "demo: link $underlay exists already (another demo running, or one killed: ip link del $underlay)"; exit 1; fi
if [ -n "$(ss -Hltn '( sport = :23771 or sport = :23781 )')" ]; then echo "demo: something listens on port 23771 or 23781 already"; exit 1; fi

work=$(mktemp -d /tmp/circuit-demo-cluster.XXXXXX)
# What this run made, so that cleanup removes that and nothing else.
made_underlay= made_nodes=() ctrs=() agent_pids=() etcd_pid=
cleanup() {
	set +e
	trap '' INT TERM HUP
	for id in "${ctrs[@]}"; do runc delete -f "$id" >/dev/null 2>&1; done
	# SIGTERM: an agent revokes its lease, as under systemd; SIGKILL after 5 s.
	for p in "${agent_pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
	for _ in $(seq 50); do
		alive=
		for p in "${agent_pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
		[ -z "$alive" ] && break
		sleep 0.1
	done
	for p in "${agent_pids[@]}" $etcd_pid; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
	for p in "$work"/node*/netns/*; do [ -e "$p" ] && umount -l "$p" 2>/dev/null; done
	for n in "${made_nodes[@]}"; do
		ip netns del "cdemo-$n" 2>/dev/null
		ip link del "cdemo-$n" 2>/dev/null
	done
	[ -n "$made_underlay" ] && ip link del "$underlay" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# on N CMD... runs CMD on node N: in its network namespace (nsenter --net,
# so circuit's netns pins stay in the host's mount namespace), with its state.
on() { local n=$1; shift; CIRCUIT_STATE=$work/$n nsenter --net="/run/netns/cdemo-$n" "$@"; }
# onshow N CMD... prints CMD as typed at a shell on node N, then runs it there.
onshow() { printf '\n%s$> %s\n' "$1" "${*:2}"; on "$@"; }
# converge WHAT CMD... runs CMD quietly until it succeeds, for $limit seconds
# at most; then it fails the demo with one line.
converge() {
	local what=$1 end=$((SECONDS + limit))
	shift
	until "$@" >/dev/null 2>&1; do
		if [ "$SECONDS" -ge "$end" ]; then echo "demo: $what: not within ${limit}s" >&2; exit 1; fi
		sleep 0.1
	done
}

# The underlay, the nodes on it, and etcd on the host's side of it.
ip link add "$underlay" type bridge
made_underlay=1
ip addr add "$net.1/24" dev "$underlay"
ip link set "$underlay" up
i=0
for n in "${nodes[@]}"; do
	i=$((i + 1))
	ip netns add "cdemo-$n"
	made_nodes+=("$n")
	ip link add "cdemo-$n" type veth peer name eth0 netns "cdemo-$n"
	ip link set "cdemo-$n" master "$underlay" up
	ip -n "cdemo-$n" addr add "$net.1$i/24" dev eth0
	ip -n "cdemo-$n" link set eth0 up
	ip -n "cdemo-$n" link set lo up
	ip -n "cdemo-$n" route add default via "$net.1"
done
etcd --name cdemo --data-dir "$work/etcd" --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
	--listen-peer-urls "$etcd_peer" --initial-advertise-peer-urls "$etcd_peer" --initial-cluster "cdemo=$etcd_peer" \
	>"$work/etcd.log" 2>&1 &
etcd_pid=$!
converge "etcd answers at $etcd_url" curl -sf -m 1 "$etcd_url/health"

echo
echo "# circuit on two hosts: node1 ($net.11) and node2 ($net.12), network namespaces on bridge"
echo "# $underlay, and etcd at ${etcd_url#http://}; 'node1\$>' is a shell on node1"
for n in "${nodes[@]}"; do
	printf '\n%s$> %s\n' "$n" "circuit-agent --store etcd://${etcd_url#http://} --node $n &"
	# Not through on(): $! must be the agent (nsenter execs it), not a subshell.
	CIRCUIT_STATE=$work/$n nsenter --net="/run/netns/cdemo-$n" circuit-agent --store "etcd://${etcd_url#http://}" --node "$n" \
		>"$work/agent-$n.log" 2>&1 &
	agent_pids+=($!)
done
both_ready() { [ "$(on node1 circuit node list --format '{{.Name}}={{.State}}')" = $'node1=ready\nnode2=ready' ]; }
converge "node1 and node2 ready in the cluster" both_ready

cd "$work"
cat >blue.conflist <<'CONF'
{
  "cniVersion": "1.0.0",
  "name": "blue",
  "plugins": [{
    "type": "bridge", "bridge": "br-blue", "isGateway": true,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.253.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}
  }]
}
CONF
onshow node1 cat blue.conflist
onshow node1 circuit network create --overlay vxlan blue.conflist
# node2's agent sees the network in etcd, claims a block and puts both in
# node2's own datastore: circuit there connects from that, without etcd.
has_block() { on "$1" circuit network list --format '{{.Name}} {{with .Cluster}}{{len .Blocks}}{{end}}' | grep -qx 'blue 1'; }
converge "node2 holds a block of blue" has_block node2
onshow node1 circuit node list

for n in "${nodes[@]}"; do
	id=web-n${n#node}
	# A detached container keeps runc's stdio: a file, not a pipe.
	if ! on "$n" runc run -d --bundle "$(bundle "$id")" "$id" >"$work/runc-$id.log" 2>&1 </dev/null; then
		echo "demo: runc run $id on $n: $(tail -n 1 "$work/runc-$id.log")" >&2
		exit 1
	fi
	ctrs+=("$id")
	onshow "$n" circuit network connect "$id" blue
done
for n in "${nodes[@]}"; do onshow "$n" circuit network list; done
addr() { on "$1" circuit network list --format '{{range .Peers}}{{range .IPs}}{{.}}{{end}}{{end}}' | sed 's|/.*||'; }
ip2=$(addr node2)
converge "node1's container reaches node2's at $ip2" on node1 runc exec web-n1 ping -c 1 -W 1 "$ip2"
onshow node1 runc exec web-n1 ping -c 3 "$ip2"
converge "node2's httpd answers node1's container" on node1 runc exec web-n1 wget -q -O /dev/null "http://$ip2/"
onshow node1 runc exec web-n1 wget -q -O - "http://$ip2/"

# A service across nodes: every node's agent balances it, to containers on
# both nodes, tied to them by ID.
vip=10.254.9.1
onshow node1 circuit lb create --cluster web "$vip:80"
# node2 tells etcd where web-n2 is a moment after its connect.
converge "node1 knows where web-n2 is" sh -c "CIRCUIT_STATE=$work/node1 nsenter --net=/run/netns/cdemo-node1 circuit network inspect blue | grep -q web-n2"
onshow node1 circuit lb add web --container web-n1:80 --container web-n2:80
balanced() { [ "$(on node2 circuit lb show web --format '{{len .Service.Targets}}')" = 2 ] && on node2 curl -sf -m 1 "http://$vip/" >/dev/null; }
converge "node2 balances web to both containers" balanced
onshow node2 circuit lb show web
printf '\nnode2$> for i in 1 2 3 4; do curl -s http://%s/; done\n' "$vip"
for _ in 1 2 3 4; do on node2 curl -s -m 5 "http://$vip/"; done
# A target reaching its own service gets itself too.
printf '\nnode1$> runc exec web-n1 sh -c '\''for i in 1 2 3 4; do wget -q -O - http://%s/; done'\''\n' "$vip"
on node1 runc exec web-n1 sh -c "for i in 1 2 3 4; do wget -q -O - http://$vip/; done"
onshow node1 circuit lb delete web
