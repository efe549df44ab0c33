// Package agent is circuit-agent, circuit's node agent: one per host of a
// cluster. It holds the etcd client (the circuit binary, which runc starts
// for every container, never links etcd), registers its node, shares
// cluster networks, address blocks and load-balancer services through
// etcd, and keeps a replica of what its node needs in the node's own
// datastore (ds/bolt at <state>/circuit.db), where circuit reads it like
// any local record. A connect or a start hook never waits on etcd: it uses
// address blocks this node already holds. It also programs the node's
// kernel: a VXLAN overlay per cluster network that reaches every other
// ready node's blocks, and masquerade of what leaves the cluster's ranges
// (overlay.go; the netlink work is pkg/overlay's and pkg/masq's).
//
// circuit talks to the agent over a unix socket (package agentapi) for what
// changes the cluster: network create and delete, cluster services, node
// list, gc --cluster, and a notify after a connect or disconnect.
//
// # Keys
//
// Everything is under a prefix P (--store-prefix, /circuit/v1):
//
//	P/cluster/...                                   a ds/etcd store: cluster networks and services
//	P/cluster/networks/<name>                       record.Network, Cluster set; no blocks, no node
//	P/cluster/services/<name>                       record.Service, Cluster true
//	P/vni                                           the next VXLAN network identifier (from 4096)
//	P/blocks/<network>/<block>                      {"node", "claimedAt"}; block is its CIDR, '/' as '_'
//	P/nodes/<node>                                  {"name", "address", "lastSeen", "conflicts", "vteps"}
//	P/alive/<node>                                  the advertised address, on the node's lease
//	P/peers/<node>/<network>/<containerID>/<ifname> record.Peer, Node set: the node's connected peers
//
// Why each is where it is:
//
//   - Networks and services are cluster-wide: every node replicates them.
//     They form a ds/etcd store, so ds/etcd reads them; the agent writes
//     them with one Txn that keeps ds/etcd's commit guard (clusterstore.go)
//     and may also touch keys outside it (the VNI counter, a network's
//     blocks), which one ds/etcd Update cannot.
//   - A VNI is taken from P/vni in the network's create Txn and never
//     handed out again, even after a delete: a node slow to tear down an
//     old overlay never carries a new network's traffic on it.
//   - Blocks are per node and never leased. A node holds a block from its
//     claim (a Txn that succeeds only if the key does not exist) until gc
//     --cluster releases it: a node cut off from etcd keeps its blocks and
//     its containers their addresses (flannel's subnet leases expiring
//     under running containers were a bug).
//   - nodes/<node> is per node, persistent: a lost node stays listed with
//     its address and when it was last seen (lastSeen, refreshed every half
//     lease TTL), which gc's grace is measured from. conflicts lists blocks
//     the node's replica held but etcd gave another node. vteps maps each
//     network the node replicates to its VTEP MAC ({"mac"}): the others
//     send that network's frames for the node's blocks there, at address.
//   - alive/<node> is the only leased key: the node is ready while it
//     exists and lost after its agent stopped (the lease is revoked) or was
//     cut off for a lease TTL.
//   - peers/<node>/... is per node, written only by that node's agent, and
//     persistent: a lost node's peers stay recorded, so gc --cluster never
//     releases a block its containers may still use, and network delete
//     names the nodes that still have containers on a network.
//
// What stays local to the node, never in etcd: netns pins, libcni's cache,
// host-local's reservations (for cluster networks under
// <state>/cluster-ipam/<network>, circuit's alone, which the agent counts
// to see when a node runs low), hook.log, and the replica's own fields
// (QoS, OwnedBridge, GC, a service's BootID).
//
// # The loop
//
// The agent serves its socket from the start, then connects (retrying with
// backoff while etcd is unreachable), grants a lease and keeps it alive,
// puts alive/<node> and nodes/<node>, lists what it follows at one
// revision, reconciles, and watches from the next revision. A watch that
// fell behind etcd's compaction lists again, as does every --resync. A
// lost lease ends the session; the next one starts over.
//
// A reconcile re-confirms the replica's blocks against etcd (confirm.go),
// claims blocks where needed (blocks.go: one per family the network's
// ranges have, one more when free addresses fall below a quarter of a
// block's), writes the replica (replica.go: only the fields the cluster
// owns, on the record as it is inside the bolt transaction) and publishes
// the node's peers (peers.go) and, when a network came or went, its VTEPs.
// Claims are seen back through the watch before the replica is written.
//
// The overlay loop (overlay.go) runs beside the reconciles: at every
// change of the view it plans what the kernel should hold from the view
// alone and programs the difference through the Dataplane, so no etcd
// request stands between a change elsewhere and this node's routes. It
// leaves the kernel alone until the first listing, and the agent removes
// nothing when it stops: containers keep talking while it is away.
//
// # Bounds
//
// Each etcd request is bounded by --request-timeout (3s), below circuit's
// own 5s for a request to the agent, and a whole request to the agent by
// nine tenths of that: with etcd unreachable, circuit hears "unavailable"
// from the agent, with nothing changed. --lease-ttl (10s) is how long a
// node stays ready after its agent last reached etcd.
package agent
