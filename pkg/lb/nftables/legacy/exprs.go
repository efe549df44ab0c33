package legacy

import (
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Registers. A concatenated key is loaded field by field into consecutive
// 32-bit registers starting at regKey; the client address, when needed
// beside a key, lives in regSaddr (a 16-byte register after the key's).
const (
	regKey   = unix.NFT_REG32_00 // key / target tuple / slot number
	regSaddr = unix.NFT_REG_3    // client address (4 or 16 bytes)
)

const ctDirOriginal = 0 // IP_CT_DIR_ORIGINAL

// fam holds the per-IP-family offsets and sizes.
type fam struct {
	v6      bool
	nfproto byte
	addrLen uint32
	saddrAt uint32 // network header offset of the source address
	daddrAt uint32 // ... and of the destination address
}

var fam4 = fam{v6: false, nfproto: unix.NFPROTO_IPV4, addrLen: 4, saddrAt: 12, daddrAt: 16}
var fam6 = fam{v6: true, nfproto: unix.NFPROTO_IPV6, addrLen: 16, saddrAt: 8, daddrAt: 24}

func famOf(v6 bool) fam {
	if v6 {
		return fam6
	}
	return fam4
}

// reg returns the 32-bit register holding the n-th word after the address.
func (f fam) reg(n uint32) uint32 { return regKey + f.addrLen/4 + n }

func matchNfproto(f fam) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: regKey},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regKey, Data: []byte{f.nfproto}},
	}
}

// loadTuple loads addr . l4proto . port from the packet: the destination
// (client->VIP direction) or the source (VIP->client direction).
func loadTuple(f fam, dst bool) []expr.Any {
	addrAt, portAt := f.saddrAt, uint32(0)
	if dst {
		addrAt, portAt = f.daddrAt, 2
	}
	return []expr.Any{
		&expr.Payload{DestRegister: regKey, Base: expr.PayloadBaseNetworkHeader, Offset: addrAt, Len: f.addrLen},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: f.reg(0)},
		&expr.Payload{DestRegister: f.reg(1), Base: expr.PayloadBaseTransportHeader, Offset: portAt, Len: 2},
	}
}

func loadSaddr(f fam) expr.Any {
	return &expr.Payload{DestRegister: regSaddr, Base: expr.PayloadBaseNetworkHeader, Offset: f.saddrAt, Len: f.addrLen}
}

// dnat translates to the target address at regKey and port after it.
func dnat(f fam) expr.Any {
	return &expr.NAT{
		Type:        expr.NATTypeDestNAT,
		Family:      uint32(f.nfproto),
		RegAddrMin:  regKey,
		RegProtoMin: f.reg(0),
		Specified:   true,
	}
}

func lookup(set string, id uint32, sreg uint32) *expr.Lookup {
	return &expr.Lookup{SourceRegister: sreg, SetName: set, SetID: id}
}
