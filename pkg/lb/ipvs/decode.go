package ipvs

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nested returns the payload of the first attribute of type typ in a genl
// message (after its 4-byte header).
func nested(m netlink.Message, typ uint16) ([]byte, error) {
	if len(m.Data) < 4 {
		return nil, fmt.Errorf("short generic netlink message")
	}
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return nil, err
	}
	for ad.Next() {
		if ad.Type() == typ {
			return ad.Bytes(), nil
		}
	}
	if err := ad.Err(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("attribute %d missing", typ)
}

// addrFrom reads an address attribute: the kernel sends 16 bytes (union
// nf_inet_addr) for both families.
func addrFrom(b []byte, family uint16) (netip.Addr, error) {
	switch {
	case family == unix.AF_INET && len(b) >= 4:
		return netip.AddrFrom4([4]byte(b[:4])), nil
	case family == unix.AF_INET6 && len(b) >= 16:
		return netip.AddrFrom16([16]byte(b[:16])), nil
	}
	return netip.Addr{}, fmt.Errorf("bad address (family %d, %d bytes)", family, len(b))
}

func decodeSvcMsg(m netlink.Message) (*svc, error) {
	b, err := nested(m, ipvsCmdAttrService)
	if err != nil {
		return nil, fmt.Errorf("decode service: %w", err)
	}
	return decodeSvc(b)
}

func decodeSvc(b []byte) (*svc, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, err
	}
	s := &svc{}
	var family, port uint16
	var raw []byte
	var st, st64 *stats
	for ad.Next() {
		switch ad.Type() {
		case svcAttrAF:
			family = ad.Uint16()
		case svcAttrProtocol:
			s.proto = ad.Uint16()
		case svcAttrAddr:
			raw = ad.Bytes()
		case svcAttrPort:
			port = be16(ad.Bytes())
		case svcAttrFWMark:
			s.fwmark = ad.Uint32()
		case svcAttrSchedName:
			s.sched = ad.String()
		case svcAttrFlags:
			if v := ad.Bytes(); len(v) >= 4 {
				s.flags = binary.NativeEndian.Uint32(v)
			}
		case svcAttrTimeout:
			s.timeout = ad.Uint32()
		case svcAttrNetmask:
			s.netmask = ad.Uint32()
		case svcAttrStats:
			st = decodeStats(ad.Bytes(), false)
		case svcAttrStats64:
			st64 = decodeStats(ad.Bytes(), true)
		}
	}
	if err := ad.Err(); err != nil {
		return nil, err
	}
	if raw != nil {
		a, err := addrFrom(raw, family)
		if err != nil {
			return nil, err
		}
		s.addr = netip.AddrPortFrom(a, port)
	}
	s.stats = pickStats(st, st64)
	return s, nil
}

func decodeDestMsg(m netlink.Message, svcAddr netip.Addr) (*dest, error) {
	b, err := nested(m, ipvsCmdAttrDest)
	if err != nil {
		return nil, fmt.Errorf("decode destination: %w", err)
	}
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, err
	}
	d := &dest{}
	family := af(svcAddr) // older kernels omit the destination's family
	var port uint16
	var raw []byte
	var st, st64 *stats
	for ad.Next() {
		switch ad.Type() {
		case destAttrAddr:
			raw = ad.Bytes()
		case destAttrPort:
			port = be16(ad.Bytes())
		case destAttrFwdMethod:
			d.fwd = ad.Uint32() & fwdMask
		case destAttrWeight:
			d.weight = ad.Uint32()
		case destAttrActiveConns:
			d.active = ad.Uint32()
		case destAttrInactConns:
			d.inactive = ad.Uint32()
		case destAttrAddrFamily:
			family = ad.Uint16()
		case destAttrStats:
			st = decodeStats(ad.Bytes(), false)
		case destAttrStats64:
			st64 = decodeStats(ad.Bytes(), true)
		}
	}
	if err := ad.Err(); err != nil {
		return nil, err
	}
	a, err := addrFrom(raw, family)
	if err != nil {
		return nil, err
	}
	d.addr = netip.AddrPortFrom(a, port)
	d.stats = pickStats(st, st64)
	return d, nil
}

// decodeStats reads IPVS_*_ATTR_STATS (u32 counters, u64 bytes) or
// STATS64 (all u64).
func decodeStats(b []byte, all64 bool) *stats {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil
	}
	st := &stats{}
	get := func(wide bool) uint64 {
		if wide || all64 {
			return ad.Uint64()
		}
		return uint64(ad.Uint32())
	}
	for ad.Next() {
		switch ad.Type() {
		case statsConns:
			st.conns = get(false)
		case statsInPkts:
			st.inPkts = get(false)
		case statsOutPkts:
			st.outPkts = get(false)
		case statsInBytes:
			st.inBytes = get(true)
		case statsOutBytes:
			st.outBytes = get(true)
		}
	}
	if ad.Err() != nil {
		return nil
	}
	return st
}

func pickStats(st, st64 *stats) stats {
	switch {
	case st64 != nil:
		return *st64
	case st != nil:
		return *st
	}
	return stats{}
}

func be16(b []byte) uint16 {
	if len(b) < 2 {
		return 0
	}
	return binary.BigEndian.Uint16(b)
}
