package api

import (
	"fmt"
	"net/netip"
	"time"
)

// Overlays circuit can build for a cluster network.
const OverlayVXLAN = "vxlan"

// Default block sizes: a node's share of a cluster range, as a prefix
// length per family.
const (
	DefaultBlockSize  = 24
	DefaultBlockSize6 = 120
)

// Cluster says a network is shared by every node of a cluster
// (circuit-agent, etcd): its range is cut into blocks, each node's
// containers get addresses from the blocks it holds.
type Cluster struct {
	Overlay    string `json:"overlay"`
	BlockSize  int    `json:"blockSize"`
	BlockSize6 int    `json:"blockSize6"`
	// Blocks are the blocks this node holds (CIDR), as its agent last
	// confirmed them; empty until the agent claimed one.
	Blocks []string `json:"blocks,omitempty"`
	// VNI is the overlay's VXLAN network identifier.
	VNI int `json:"vni,omitempty"`
	// Node is this node's name (a node's replica of the network).
	Node string `json:"node,omitempty"`
	// MTU is the overlay's on this node (its underlay's less VXLAN's
	// overhead), as its agent found it: circuit gives containers this MTU.
	// 0 until the agent found the underlay.
	MTU int `json:"mtu,omitempty"`
}

// NodeState is a cluster node's state: ready while its agent's lease
// lives, lost after.
type NodeState string

const (
	NodeReady NodeState = "ready"
	NodeLost  NodeState = "lost"
)

func (s NodeState) String() string { return string(s) }

// Node is one host of a cluster, as the cluster knows it.
type Node struct {
	Name     string    `json:"name"`
	Address  string    `json:"address"` // the agent's advertised address
	Blocks   []string  `json:"blocks"`  // CIDR, every cluster network's
	State    NodeState `json:"state"`
	LastSeen time.Time `json:"lastSeen"`
	// Conflicts are blocks this node's replica held that etcd gives to
	// another node: never used again here.
	Conflicts []string `json:"conflicts,omitempty"`
}

// CreateNetworkRequest is a network create: the configuration as given,
// and for a cluster network, its overlay and block sizes.
type CreateNetworkRequest struct {
	Config     []byte
	Force      bool
	Overlay    string // "" for a network of this host only
	BlockSize  int    // 0: DefaultBlockSize
	BlockSize6 int    // 0: DefaultBlockSize6
}

// ValidNodeName checks a node's name: a DNS label or name (it is a
// hostname by default), 1 to 253 bytes, labels of letters, digits and '-'.
func ValidNodeName(name string) error {
	if len(name) == 0 || len(name) > 253 {
		return Errorf(ErrInvalid, "node name %s: use 1 to 253 characters", quote(name))
	}
	label := 0
	for i := 0; i < len(name); i++ {
		b := name[i]
		switch {
		case b == '.':
			if label == 0 {
				return Errorf(ErrInvalid, "node name %s: an empty label", quote(name))
			}
			label = 0
			continue
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9', b == '-' && label > 0:
		default:
			return Errorf(ErrInvalid, "node name %s: use letters, digits, '-' and '.' (a host name)", quote(name))
		}
		if label++; label > 63 {
			return Errorf(ErrInvalid, "node name %s: a label longer than 63", quote(name))
		}
	}
	if label == 0 {
		return Errorf(ErrInvalid, "node name %s: an empty label", quote(name))
	}
	return nil
}

// ValidCluster checks a cluster network's overlay and block sizes against
// its ranges (CIDR, from the configuration's IPAM), filling defaults. A
// block must fit in each range of its family and hold more than its
// network and broadcast addresses.
func ValidCluster(c *Cluster, ranges []string) error {
	if c.Overlay != OverlayVXLAN {
		return Errorf(ErrInvalid, "overlay %s: want %s", quote(c.Overlay), OverlayVXLAN)
	}
	if c.BlockSize == 0 {
		c.BlockSize = DefaultBlockSize
	}
	if c.BlockSize6 == 0 {
		c.BlockSize6 = DefaultBlockSize6
	}
	if c.BlockSize < 8 || c.BlockSize > 30 {
		return Errorf(ErrInvalid, "block size /%d: use 8 to 30 for IPv4", c.BlockSize)
	}
	if c.BlockSize6 < 64 || c.BlockSize6 > 126 {
		return Errorf(ErrInvalid, "IPv6 block size /%d: use 64 to 126", c.BlockSize6)
	}
	if len(ranges) == 0 {
		return Errorf(ErrInvalid, "a cluster network needs host-local IPAM with a subnet or ranges: its range is cut into the nodes' blocks")
	}
	for _, r := range ranges {
		p, err := netip.ParsePrefix(r)
		if err != nil {
			return Errorf(ErrInvalid, "range %s: %v", quote(r), err)
		}
		bits := c.BlockSize
		if p.Addr().Is6() {
			bits = c.BlockSize6
		}
		if bits < p.Bits() {
			return Errorf(ErrInvalid, "blocks of /%d do not fit in range %s", bits, p)
		}
	}
	return nil
}

// Blocks cuts a range into blocks of prefix length bits, in address order.
func Blocks(r netip.Prefix, bits int) ([]netip.Prefix, error) {
	r = r.Masked()
	if bits < r.Bits() || bits > r.Addr().BitLen() {
		return nil, fmt.Errorf("blocks of /%d do not fit in %s", bits, r)
	}
	if n := bits - r.Bits(); n > 16 {
		return nil, fmt.Errorf("%s holds 2^%d blocks of /%d: more than circuit enumerates (65536)", r, n, bits)
	}
	var out []netip.Prefix
	for a := r.Addr(); r.Contains(a); {
		p := netip.PrefixFrom(a, bits)
		out = append(out, p)
		next, ok := addBlock(a, bits)
		if !ok {
			break
		}
		a = next
	}
	return out, nil
}

// addBlock is a plus one block of prefix length bits, false on overflow.
func addBlock(a netip.Addr, bits int) (netip.Addr, bool) {
	b := a.AsSlice()
	i := bits - 1 // the lowest bit of the prefix
	for ; i >= 0; i-- {
		byteI, bitI := i/8, 7-i%8
		if b[byteI]&(1<<bitI) == 0 {
			b[byteI] |= 1 << bitI
			out, _ := netip.AddrFromSlice(b)
			return out, true
		}
		b[byteI] &^= 1 << bitI
	}
	return netip.Addr{}, false
}
