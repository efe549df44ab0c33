// Package conntrack counts, over ctnetlink, the connections conntrack
// holds for a load-balanced service, per target. It asks the kernel to
// filter the dump by the service's address (CTA_FILTER, Linux 5.8+) and
// filters again itself, for kernels that ignore the filter.
package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ctnetlink's numbers (include/uapi/linux/netfilter/nfnetlink_conntrack.h;
// the filter flags are the kernel's, net/netfilter/nf_conntrack_netlink.c).
const (
	subsysCtnetlink = 1 // NFNL_SUBSYS_CTNETLINK
	msgGet          = 1 // IPCTNL_MSG_CT_GET

	ctaTupleOrig  = 1
	ctaTupleReply = 2
	ctaStatus     = 3
	ctaProtoinfo  = 4
	ctaFilter     = 25

	ctaTupleIP    = 1
	ctaTupleProto = 2

	ctaProtoNum     = 1
	ctaProtoSrcPort = 2
	ctaProtoDstPort = 3

	ctaProtoinfoTCP      = 1
	ctaProtoinfoTCPState = 1

	ctaFilterOrigFlags = 1
	filterIPDst        = 1 << 1
	filterProtoNum     = 1 << 3
	filterProtoDstPort = 1 << 5

	ipsDstNAT        = 1 << 5
	tcpStateTimeWait = 7
	tcpStateClose    = 8
)

// Count returns how many connections to vip (protocol proto) each target
// holds: the conntrack entries whose original destination is vip and
// whose reply comes from the target (DNAT rewrote it). TCP connections in
// TIME_WAIT or CLOSE carry no more data and are left out.
func Count(nsFd int, vip netip.AddrPort, proto uint8) (map[netip.AddrPort]uint64, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: nsFd})
	if err != nil {
		return nil, fmt.Errorf("conntrack: dial: %w", err)
	}
	defer c.Close()
	msgs, err := dump(c, vip, proto, true)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
		msgs, err = dump(c, vip, proto, false) // a kernel without CTA_FILTER
	}
	if err != nil {
		return nil, fmt.Errorf("conntrack: dump connections to %s: %w", vip, err)
	}
	out := map[netip.AddrPort]uint64{}
	for _, m := range msgs {
		e, err := decode(m.Data)
		if err != nil {
			return nil, fmt.Errorf("conntrack: %w", err)
		}
		if e.origDst != vip || e.proto != proto || e.status&ipsDstNAT == 0 || e.replySrc == vip {
			continue
		}
		if proto == unix.IPPROTO_TCP && (e.tcpState == tcpStateTimeWait || e.tcpState == tcpStateClose) {
			continue
		}
		out[e.replySrc]++
	}
	return out, nil
}

func family(a netip.Addr) uint8 {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

func dump(c *netlink.Conn, vip netip.AddrPort, proto uint8, filter bool) ([]netlink.Message, error) {
	ae := netlink.NewAttributeEncoder()
	if filter {
		ae.Nested(ctaTupleOrig, func(t *netlink.AttributeEncoder) error {
			t.Nested(ctaTupleIP, func(ip *netlink.AttributeEncoder) error {
				ip.Bytes(ipDst(vip.Addr()), vip.Addr().AsSlice())
				return nil
			})
			t.Nested(ctaTupleProto, func(p *netlink.AttributeEncoder) error {
				p.Uint8(ctaProtoNum, proto)
				p.Bytes(ctaProtoDstPort, binary.BigEndian.AppendUint16(nil, vip.Port()))
				return nil
			})
			return nil
		})
		// Linux 6.18 matches nothing when filtering on an IPv6 address:
		// for IPv6 the kernel filters by protocol and port, Count by the
		// address.
		flags := uint32(filterProtoNum | filterProtoDstPort)
		if vip.Addr().Is4() {
			flags |= filterIPDst
		}
		ae.Nested(ctaFilter, func(f *netlink.AttributeEncoder) error {
			f.Uint32(ctaFilterOrigFlags, flags)
			return nil
		})
	}
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	return c.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(subsysCtnetlink<<8 | msgGet), Flags: netlink.Request | netlink.Dump},
		Data:   append([]byte{family(vip.Addr()), unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
}

// ipDst is CTA_IP_V4_DST or CTA_IP_V6_DST.
func ipDst(a netip.Addr) uint16 {
	if a.Is4() {
		return 2
	}
	return 4
}

// entry is the part of a conntrack entry Count looks at.
type entry struct {
	origDst, replySrc netip.AddrPort
	proto             uint8
	status            uint32
	tcpState          uint8
}

func decode(b []byte) (entry, error) {
	var e entry
	if len(b) < 4 {
		return e, errors.New("short conntrack message")
	}
	ad, err := netlink.NewAttributeDecoder(b[4:])
	if err != nil {
		return e, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case ctaTupleOrig:
			ad.Nested(func(t *netlink.AttributeDecoder) error {
				_, e.origDst, e.proto = tuple(t)
				return nil
			})
		case ctaTupleReply:
			ad.Nested(func(t *netlink.AttributeDecoder) error {
				e.replySrc, _, _ = tuple(t)
				return nil
			})
		case ctaStatus:
			e.status = ad.Uint32()
		case ctaProtoinfo:
			ad.Nested(func(p *netlink.AttributeDecoder) error {
				for p.Next() {
					if p.Type() == ctaProtoinfoTCP {
						p.Nested(func(tcp *netlink.AttributeDecoder) error {
							for tcp.Next() {
								if tcp.Type() == ctaProtoinfoTCPState {
									e.tcpState = tcp.Uint8()
								}
							}
							return nil
						})
					}
				}
				return nil
			})
		}
	}
	return e, ad.Err()
}

// tuple reads a CTA_TUPLE_* attribute: source, destination, protocol.
func tuple(t *netlink.AttributeDecoder) (src, dst netip.AddrPort, proto uint8) {
	var sa, da netip.Addr
	var sp, dp uint16
	t.ByteOrder = binary.BigEndian
	for t.Next() {
		switch t.Type() {
		case ctaTupleIP:
			t.Nested(func(ip *netlink.AttributeDecoder) error {
				for ip.Next() {
					a, _ := netip.AddrFromSlice(ip.Bytes())
					switch ip.Type() {
					case 1, 3: // CTA_IP_V4_SRC, CTA_IP_V6_SRC
						sa = a
					case 2, 4:
						da = a
					}
				}
				return nil
			})
		case ctaTupleProto:
			t.Nested(func(p *netlink.AttributeDecoder) error {
				p.ByteOrder = binary.BigEndian
				for p.Next() {
					switch p.Type() {
					case ctaProtoNum:
						proto = p.Uint8()
					case ctaProtoSrcPort:
						sp = p.Uint16()
					case ctaProtoDstPort:
						dp = p.Uint16()
					}
				}
				return nil
			})
		}
	}
	return netip.AddrPortFrom(sa, sp), netip.AddrPortFrom(da, dp), proto
}
