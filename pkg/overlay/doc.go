// Package overlay programs a node's VXLAN overlays over netlink, laid out
// as flannel's vxlan backend lays them out (its formats and the kernel's
// behaviour carry over; the code is circuit's own):
//
//	device   one VXLAN device per network: VNI, UDP 4789, learning off,
//	         the node's underlay address as source, the underlay link as
//	         parent, MTU the underlay's less the encapsulation, and the
//	         node's VTEP MAC as its hardware address
//	address  the network address of each block the node holds (/32, /128)
//	route    per remote block: block via <its network address> dev <device>
//	         onlink, with protocol RouteProtocol
//	neigh    per remote block: <its network address> -> remote VTEP MAC,
//	         permanent
//	fdb      per remote node: remote VTEP MAC -> remote underlay address,
//	         permanent
//
// A packet for a remote block is routed to the device with the block's
// network address as next hop; the neighbour entry gives that next hop the
// remote VTEP's MAC without ARP, and the FDB entry tells the device which
// underlay address to send frames for that MAC to. The remote device owns
// that MAC, takes the frame, and routes the packet on to its bridge.
//
// Sync brings the kernel to a desired state and touches only what circuit
// made: devices carry an alias naming them circuit's (a device of the same
// name without it is refused, never taken over), routes carry
// RouteProtocol, and neighbour and FDB entries are only ever changed on
// circuit's own devices. The package knows nothing of etcd or of circuit's
// records: the agent decides what a node should have.
package overlay
