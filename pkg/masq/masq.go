// Package masq masquerades the traffic of cluster networks that leaves
// them, in one nftables table circuit owns (inet circuit-cluster) and
// nothing else: containers of cluster networks see each other's real
// addresses across nodes, and reach the rest of the world with their
// node's.
//
// Into an overlay, traffic from outside the ranges (a node's own, or a
// client balanced to a container on another node) is masqueraded to the
// overlay device's address, which is in the ranges: the answer then comes
// back through the node that sent it, where conntrack undoes the NAT (and
// a service's DNAT). Without it the other node would answer the client
// directly, masqueraded, and the client would drop what it never asked.
//
// A container balanced to itself by a service of the cluster (IPVS, or
// nftables) would get its own packet back with its own address as the
// source, and drop it: traffic to the ranges whose source is its
// destination is masqueraded, to the bridge's address. nftables cannot
// compare two addresses, so the rule adds {daddr . daddr} to a set and
// looks up {saddr . daddr}: a hit means they are equal.
//
// The table holds a set per family for that, and one NAT chain at
// postrouting:
//
//	oifname != "lo" ip daddr 10.244.0.0/16 update @self4 { ip daddr . ip daddr } ip saddr . ip daddr @self4 masquerade
//	oifname "cvx4096" ip saddr 10.244.0.0/16 return   each overlay and range: inside, never NATed
//	oifname "cvx4096" ip6 saddr fd00:244::/112 return
//	oifname "cvx4096" masquerade                      from outside the ranges into an overlay
//	ip daddr 10.244.0.0/16 return                     each range: stays inside the ranges
//	ip6 daddr fd00:244::/112 return
//	ip saddr 10.244.0.0/16 masquerade                 each range: leaves them, masqueraded
//	ip6 saddr fd00:244::/112 masquerade
//
// Sync writes the table whole, in one nftables transaction, when it
// differs from what is wanted; the first rule carries a fingerprint of the
// wanted rules, so a table already in line costs one read.
package masq

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Table is circuit's cluster NAT table (family inet); pkg/lb's is "circuit".
const Table = "circuit-cluster"

const chainName = "postrouting"

// Rules is what the table should do.
type Rules struct {
	Ranges   []netip.Prefix // every cluster network's ranges
	Overlays []string       // circuit's overlay devices
}

// normalize sorts and dedupes, so equal rules write equal tables.
func (r Rules) normalize() Rules {
	out := Rules{Overlays: slices.Clone(r.Overlays)}
	for _, p := range r.Ranges {
		out.Ranges = append(out.Ranges, p.Masked())
	}
	slices.SortFunc(out.Ranges, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	out.Ranges = slices.Compact(out.Ranges)
	slices.Sort(out.Overlays)
	out.Overlays = slices.Compact(out.Overlays)
	return out
}

// fingerprint names the rules r makes.
func (r Rules) fingerprint() []byte {
	var b strings.Builder
	b.WriteString("circuit-cluster v3\n")
	for _, o := range r.Overlays {
		fmt.Fprintf(&b, "oif %s\n", o)
	}
	for _, p := range r.Ranges {
		fmt.Fprintf(&b, "range %s\n", p)
	}
	sum := sha256.Sum256([]byte(b.String()))
	return sum[:]
}

// Handle writes the table in one network namespace.
type Handle struct {
	ns *os.File // nil: the caller's
}

// Open binds a handle to the netns at nsPath ("": the caller's).
func Open(nsPath string) (*Handle, error) {
	h := &Handle{}
	if nsPath != "" {
		f, err := os.Open(nsPath)
		if err != nil {
			return nil, fmt.Errorf("masquerade: open netns %s: %w", nsPath, err)
		}
		h.ns = f
	}
	return h, nil
}

// Close releases the namespace.
func (h *Handle) Close() {
	if h.ns != nil {
		h.ns.Close()
	}
}

// conn is a fresh connection: a failed batch never leaves messages behind
// for the next one.
func (h *Handle) conn() (*nftables.Conn, error) {
	fd := 0
	if h.ns != nil {
		fd = int(h.ns.Fd())
	}
	c, err := nftables.New(nftables.WithNetNSFd(fd))
	if err != nil {
		return nil, fmt.Errorf("masquerade: nftables: %w", err)
	}
	return c, nil
}

var table = &nftables.Table{Name: Table, Family: nftables.TableFamilyINet}

// Sync makes the table do r; with no range, the table is removed. It
// reports whether it wrote anything.
func (h *Handle) Sync(r Rules) (bool, error) {
	r = r.normalize()
	if len(r.Ranges) == 0 {
		return h.remove()
	}
	c, err := h.conn()
	if err != nil {
		return false, err
	}
	if h.inLine(c, r) {
		return false, nil
	}
	// Add and delete first: the table goes whatever it held, and the
	// transaction does not fail on a table that was not there.
	c.AddTable(table)
	c.DelTable(table)
	c.AddTable(table)
	for _, v6 := range []bool{false, true} {
		if err := c.AddSet(selfSet(v6), nil); err != nil {
			return false, fmt.Errorf("masquerade: %w", err)
		}
	}
	ch := c.AddChain(&nftables.Chain{
		Name: chainName, Table: table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	})
	for i, rule := range rules(r) {
		nr := &nftables.Rule{Table: table, Chain: ch, Exprs: rule}
		if i == 0 {
			nr.UserData = r.fingerprint()
		}
		c.AddRule(nr)
	}
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("masquerade: write table inet %s: %w", Table, err)
	}
	return true, nil
}

// inLine reports whether the kernel's table already does r.
func (h *Handle) inLine(c *nftables.Conn, r Rules) bool {
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return false
	}
	var ch *nftables.Chain
	for _, x := range chains {
		if x.Table.Name == Table && x.Name == chainName {
			ch = x
		}
	}
	if ch == nil {
		return false
	}
	have, err := c.GetRules(table, ch)
	if err != nil || len(have) != len(rules(r)) || len(have) == 0 {
		return false
	}
	return bytes.Equal(have[0].UserData, r.fingerprint())
}

// Remove deletes the table, if there is one.
func (h *Handle) Remove() error {
	_, err := h.remove()
	return err
}

func (h *Handle) remove() (bool, error) {
	c, err := h.conn()
	if err != nil {
		return false, err
	}
	if _, err := c.ListTableOfFamily(Table, nftables.TableFamilyINet); err != nil {
		if isNotExist(err) {
			return false, nil
		}
		return false, fmt.Errorf("masquerade: look up table inet %s: %w", Table, err)
	}
	c.DelTable(table)
	if err := c.Flush(); err != nil && !isNotExist(err) {
		return false, fmt.Errorf("masquerade: delete table inet %s: %w", Table, err)
	}
	return true, nil
}

// isNotExist reports ENOENT; some of google/nftables' getters format the
// errno with %v, so its text counts too.
func isNotExist(err error) bool {
	return err != nil && (errors.Is(err, unix.ENOENT) || strings.Contains(err.Error(), unix.ENOENT.Error()))
}

// selfTimeout lets the addresses of containers gone age out of the sets.
const selfTimeout = time.Hour

// selfSet holds {daddr . daddr} of traffic to the ranges (see the package
// doc).
func selfSet(v6 bool) *nftables.Set {
	name, typ := "self4", nftables.TypeIPAddr
	if v6 {
		name, typ = "self6", nftables.TypeIP6Addr
	}
	return &nftables.Set{Table: table, Name: name, Dynamic: true, HasTimeout: true, Timeout: selfTimeout,
		Size: 65536, Concatenation: true, KeyType: nftables.MustConcatSetType(typ, typ)}
}

// selfRule masquerades traffic to p from its own destination.
func selfRule(p netip.Prefix) []expr.Any {
	size, saddr, daddr := uint32(4), uint32(12), uint32(16)
	if p.Addr().Is6() {
		size, saddr, daddr = 16, 8, 24
	}
	load := func(at, reg uint32) expr.Any {
		return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: at, Len: size}
	}
	first, second := uint32(unix.NFT_REG32_00), uint32(unix.NFT_REG32_00)+size/4
	set := selfSet(p.Addr().Is6()).Name
	return slices.Concat([]expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname("lo")},
	}, matchPrefix(p, false), []expr.Any{
		load(daddr, first), load(daddr, second),
		&expr.Dynset{SrcRegKey: first, SetName: set, Operation: unix.NFT_DYNSET_OP_UPDATE},
		load(saddr, first), load(daddr, second),
		&expr.Lookup{SourceRegister: first, SetName: set},
		&expr.Masq{},
	})
}

// rules are the chain's rules, in order (see the package doc).
func rules(r Rules) [][]expr.Any {
	var out [][]expr.Any
	for _, p := range r.Ranges {
		out = append(out, selfRule(p))
	}
	for _, o := range r.Overlays {
		oif := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(o)},
		}
		for _, p := range r.Ranges {
			out = append(out, slices.Concat(oif, matchPrefix(p, true), []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}}))
		}
		out = append(out, append(slices.Clone(oif), &expr.Masq{}))
	}
	for _, p := range r.Ranges {
		out = append(out, append(matchPrefix(p, false), &expr.Verdict{Kind: expr.VerdictReturn}))
	}
	for _, p := range r.Ranges {
		out = append(out, append(matchPrefix(p, true), &expr.Masq{}))
	}
	return out
}

// matchPrefix matches packets of p's family whose source (or destination)
// address is in p.
func matchPrefix(p netip.Prefix, source bool) []expr.Any {
	proto, size, offset := byte(unix.NFPROTO_IPV4), uint32(4), uint32(16)
	if source {
		offset = 12
	}
	if p.Addr().Is6() {
		proto, size, offset = unix.NFPROTO_IPV6, 16, 24
		if source {
			offset = 8
		}
	}
	mask := make([]byte, size)
	for i := 0; i < p.Bits(); i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: size},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: size, Mask: mask, Xor: make([]byte, size)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}
}

// ifname is an interface name as the kernel compares it: IFNAMSIZ bytes,
// zero-padded.
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}
