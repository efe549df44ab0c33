package nftables

import (
	"encoding/binary"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Registers. A concatenated key is loaded field by field into consecutive
// 32-bit registers starting at regKey; the client address, when needed
// beside a key, lives in regSaddr (a 16-byte register after the key's).
const (
	regKey   = unix.NFT_REG32_00 // key / target tuple
	regSaddr = unix.NFT_REG_3    // client address (4 or 16 bytes)
)

const (
	ipsConfirmed = 1 << 3 // IPS_CONFIRMED: not the connection's first packet
	ipsDstNAT    = 1 << 5 // IPS_DST_NAT: the connection was DNATed
	ctDirOrig    = 0      // IP_CT_DIR_ORIGINAL
	ctDirReply   = 1      // IP_CT_DIR_REPLY
)

// fam holds the per-IP-family offsets and sizes.
type fam struct {
	v6      bool
	nfproto byte
	addrLen uint32
	saddrAt uint32 // network header offset of the source address
	daddrAt uint32 // ... and of the destination address
	ctSrc   uint32 // conntrack keys of the tuple's addresses
	ctDst   uint32
}

var (
	fam4 = fam{v6: false, nfproto: unix.NFPROTO_IPV4, addrLen: 4, saddrAt: 12, daddrAt: 16,
		ctSrc: unix.NFT_CT_SRC_IP, ctDst: unix.NFT_CT_DST_IP}
	fam6 = fam{v6: true, nfproto: unix.NFPROTO_IPV6, addrLen: 16, saddrAt: 8, daddrAt: 24,
		ctSrc: unix.NFT_CT_SRC_IP6, ctDst: unix.NFT_CT_DST_IP6}
	fams = []fam{fam4, fam6}
)

func famOf(v6 bool) fam {
	if v6 {
		return fam6
	}
	return fam4
}

// reg returns the 32-bit register holding the n-th word after an address
// loaded at regKey.
func (f fam) reg(n uint32) uint32 { return regKey + f.addrLen/4 + n }

// cat joins rule parts into a new slice.
func cat(parts ...[]any) []any {
	var out []any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func match(key expr.MetaKey, v byte) []any {
	return []any{
		&expr.Meta{Key: key, Register: regKey},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regKey, Data: []byte{v}},
	}
}

// matchFam matches the IP family and transport protocol. Besides
// filtering, they give nft the context to print addresses and ports.
func matchFam(f fam, proto uint8) []any {
	return cat(match(expr.MetaKeyNFPROTO, f.nfproto), match(expr.MetaKeyL4PROTO, proto))
}

// ctStatus matches a conntrack status bit set (want) or clear.
func ctStatus(bit uint32, want bool) []any {
	op := expr.CmpOpEq
	if want {
		op = expr.CmpOpNeq
	}
	return []any{
		&expr.Ct{Key: expr.CtKeySTATUS, Register: regKey},
		&expr.Bitwise{SourceRegister: regKey, DestRegister: regKey, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bit), Xor: make([]byte, 4)},
		&expr.Cmp{Op: op, Register: regKey, Data: make([]byte, 4)},
	}
}

// loadVIP loads the destination addr . l4proto . port from the packet
// (before DNAT, or from a reply after un-DNAT when src is set).
func loadVIP(f fam, src bool) []any {
	addrAt, portAt := f.daddrAt, uint32(2)
	if src {
		addrAt, portAt = f.saddrAt, 0
	}
	return []any{
		&expr.Payload{DestRegister: regKey, Base: expr.PayloadBaseNetworkHeader, Offset: addrAt, Len: f.addrLen},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: f.reg(0)},
		&expr.Payload{DestRegister: f.reg(1), Base: expr.PayloadBaseTransportHeader, Offset: portAt, Len: 2},
	}
}

// ctVIP loads the connection's original destination: the VIP tuple.
func ctVIP(f fam) []any {
	return []any{
		ctLoad{key: f.ctDst, dir: ctDirOrig, reg: regKey},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: f.reg(0)},
		ctLoad{key: unix.NFT_CT_PROTO_DST, dir: ctDirOrig, reg: f.reg(1)},
	}
}

// ctPair loads VIP tuple . target: the target is the source of the reply
// direction, which DNAT rewrote.
func ctPair(f fam) []any {
	return cat(ctVIP(f), []any{
		ctLoad{key: f.ctSrc, dir: ctDirReply, reg: f.reg(2)},
		ctLoad{key: unix.NFT_CT_PROTO_SRC, dir: ctDirReply, reg: f.reg(2) + f.addrLen/4},
	})
}

func loadSaddr(f fam) *expr.Payload {
	return &expr.Payload{DestRegister: regSaddr, Base: expr.PayloadBaseNetworkHeader, Offset: f.saddrAt, Len: f.addrLen}
}

// dnat translates to the target address at regKey and port after it.
func dnat(f fam) *expr.NAT {
	return &expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(f.nfproto),
		RegAddrMin: regKey, RegProtoMin: f.reg(0), Specified: true}
}

func lookup(set string, sreg uint32) *expr.Lookup {
	return &expr.Lookup{SourceRegister: sreg, SetName: set}
}

func lookupMap(set string, sreg, dreg uint32) *expr.Lookup {
	return &expr.Lookup{SourceRegister: sreg, IsDestRegSet: true, DestRegister: dreg, SetName: set}
}

// ctLoad is a conntrack load with a direction. google/nftables cannot
// express it: its Ct sends the direction of the generic keys as a u32
// (the kernel reads one byte, so "reply" becomes "original") and none for
// the NFT_CT_*_IP keys, and the generic address keys make nft 1.0 abort
// when it lists the rule. This is what nft itself sends for
// "ct original ip daddr".
type ctLoad struct {
	key uint32
	dir uint8
	reg uint32
}

func (c ctLoad) marshal() ([]byte, error) {
	data, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_CT_DREG, Data: binary.BigEndian.AppendUint32(nil, c.reg)},
		{Type: unix.NFTA_CT_KEY, Data: binary.BigEndian.AppendUint32(nil, c.key)},
		{Type: unix.NFTA_CT_DIRECTION, Data: []byte{c.dir}},
	})
	if err != nil {
		return nil, err
	}
	return netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_EXPR_NAME, Data: []byte("ct\x00")},
		{Type: unix.NLA_F_NESTED | unix.NFTA_EXPR_DATA, Data: data},
	})
}

// exprs keeps only google/nftables expressions (rules without ctLoad).
func exprs(parts []any) []expr.Any {
	out := make([]expr.Any, len(parts))
	for i, p := range parts {
		out[i] = p.(expr.Any)
	}
	return out
}

// rawRule encodes an "add rule" of google/nftables expressions and
// ctLoads, as google/nftables' AddRule does, with an optional comment.
func rawRule(chain string, parts []any, comment ...string) (netlink.Message, error) {
	var list []netlink.Attribute
	for _, p := range parts {
		var b []byte
		var err error
		switch e := p.(type) {
		case ctLoad:
			b, err = e.marshal()
		case expr.Any:
			b, err = expr.Marshal(byte(nftables.TableFamilyINet), e)
		}
		if err != nil {
			return netlink.Message{}, err
		}
		list = append(list, netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: b})
	}
	el, err := netlink.MarshalAttributes(list)
	if err != nil {
		return netlink.Message{}, err
	}
	ra := []netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: []byte(tableName + "\x00")},
		{Type: unix.NFTA_RULE_CHAIN, Data: []byte(chain + "\x00")},
		{Type: unix.NLA_F_NESTED | unix.NFTA_RULE_EXPRESSIONS, Data: el},
	}
	for _, c := range comment {
		ra = append(ra, netlink.Attribute{Type: unix.NFTA_RULE_USERDATA, Data: userdata.AppendString(nil, userdata.TypeComment, c)})
	}
	attrs, err := netlink.MarshalAttributes(ra)
	if err != nil {
		return netlink.Message{}, err
	}
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWRULE),
			Flags: netlink.Request | netlink.Create | unix.NLM_F_APPEND},
		Data: append(nfgenmsg(unix.NFPROTO_INET, 0), attrs...),
	}, nil
}
