package ipvs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// A minimal client of the kernel's IPVS generic netlink family
// (include/uapi/linux/ip_vs.h). github.com/moby/ipvs speaks the same
// protocol but runs `modprobe ip_vs` on first use and caches the family
// id process-wide; circuit must not exec tools, and the kernel loads
// ip_vs by itself when the family is first asked for.

const (
	genlCtrlID          = 0x10 // GENL_ID_CTRL
	ctrlCmdGetFamily    = 3    // CTRL_CMD_GETFAMILY
	ctrlAttrFamilyID    = 1    // CTRL_ATTR_FAMILY_ID
	ctrlAttrFamilyName  = 2    // CTRL_ATTR_FAMILY_NAME
	ipvsGenlName        = "IPVS"
	ipvsGenlVersion     = 1
	ipvsCmdNewService   = 1
	ipvsCmdSetService   = 2
	ipvsCmdDelService   = 3
	ipvsCmdGetService   = 4
	ipvsCmdNewDest      = 5
	ipvsCmdSetDest      = 6
	ipvsCmdDelDest      = 7
	ipvsCmdGetDest      = 8
	ipvsCmdAttrService  = 1
	ipvsCmdAttrDest     = 2
	svcAttrAF           = 1
	svcAttrProtocol     = 2
	svcAttrAddr         = 3
	svcAttrPort         = 4
	svcAttrFWMark       = 5
	svcAttrSchedName    = 6
	svcAttrFlags        = 7
	svcAttrTimeout      = 8
	svcAttrNetmask      = 9
	svcAttrStats        = 10
	svcAttrStats64      = 12
	destAttrAddr        = 1
	destAttrPort        = 2
	destAttrFwdMethod   = 3
	destAttrWeight      = 4
	destAttrUThresh     = 5
	destAttrLThresh     = 6
	destAttrActiveConns = 7
	destAttrInactConns  = 8
	destAttrStats       = 10
	destAttrAddrFamily  = 11
	destAttrStats64     = 12
	statsConns          = 1
	statsInPkts         = 2
	statsOutPkts        = 3
	statsInBytes        = 4
	statsOutBytes       = 5
	svcFlagPersistent   = 0x1 // IP_VS_SVC_F_PERSISTENT
	fwdMasq             = 0   // IP_VS_CONN_F_MASQ
	fwdTunnel           = 2   // IP_VS_CONN_F_TUNNEL
	fwdDirectRoute      = 3   // IP_VS_CONN_F_DROUTE
	fwdMask             = 0x7
	netmaskHost4        = 0xffffffff
	netmaskHost6        = 128
)

// svc is an IPVS virtual service as the kernel sees it.
type svc struct {
	addr    netip.AddrPort
	proto   uint16
	fwmark  uint32
	sched   string
	flags   uint32
	timeout uint32 // seconds
	netmask uint32
	stats   stats
}

// dest is an IPVS real server.
type dest struct {
	addr     netip.AddrPort
	fwd      uint32
	weight   uint32
	active   uint32
	inactive uint32
	stats    stats
}

type stats struct {
	conns, inPkts, outPkts, inBytes, outBytes uint64
}

func af(a netip.Addr) uint16 {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// genl is a generic netlink socket bound to one netns.
type genl struct {
	c      *netlink.Conn
	family uint16 // 0 until resolved
}

func dialGenl(nsFd int) (*genl, error) {
	c, err := netlink.Dial(unix.NETLINK_GENERIC, &netlink.Config{NetNS: nsFd})
	if err != nil {
		return nil, fmt.Errorf("dial generic netlink: %w", err)
	}
	return &genl{c: c}, nil
}

// resolve asks the kernel for the IPVS family id. The kernel loads the
// ip_vs module on demand for this request if it is available.
func (g *genl) resolve() error {
	if g.family != 0 {
		return nil
	}
	ae := netlink.NewAttributeEncoder()
	ae.String(ctrlAttrFamilyName, ipvsGenlName)
	msgs, err := g.exec(genlCtrlID, ctrlCmdGetFamily, 0, ae)
	if err != nil {
		return err
	}
	for _, m := range msgs {
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return err
		}
		for ad.Next() {
			if ad.Type() == ctrlAttrFamilyID {
				g.family = ad.Uint16()
				return nil
			}
		}
	}
	return errors.New("no IPVS family id in the kernel's answer")
}

// exec sends one genl command: a dump if flags has netlink.Dump, else a
// request (acknowledged when it changes something).
func (g *genl) exec(family uint16, cmd uint8, flags netlink.HeaderFlags, ae *netlink.AttributeEncoder) ([]netlink.Message, error) {
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	m := netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(family), Flags: netlink.Request | flags},
		Data:   append([]byte{cmd, ipvsGenlVersion, 0, 0}, attrs...),
	}
	return g.c.Execute(m)
}

func (g *genl) do(cmd uint8, s *svc, d *dest, full bool) error {
	ae := netlink.NewAttributeEncoder()
	encodeSvc(ae, s, full)
	if d != nil {
		encodeDest(ae, s, d)
	}
	_, err := g.exec(g.family, cmd, netlink.Acknowledge, ae)
	return err
}

func (g *genl) newService(s *svc) error { return g.do(ipvsCmdNewService, s, nil, true) }
func (g *genl) setService(s *svc) error { return g.do(ipvsCmdSetService, s, nil, true) }
func (g *genl) delService(s *svc) error { return g.do(ipvsCmdDelService, s, nil, false) }
func (g *genl) newDest(s *svc, d *dest) error {
	return g.do(ipvsCmdNewDest, s, d, false)
}
func (g *genl) setDest(s *svc, d *dest) error { return g.do(ipvsCmdSetDest, s, d, false) }
func (g *genl) delDest(s *svc, d *dest) error { return g.do(ipvsCmdDelDest, s, d, false) }

// getService returns the service with s's key; ESRCH if there is none.
func (g *genl) getService(s *svc) (*svc, error) {
	ae := netlink.NewAttributeEncoder()
	encodeSvc(ae, s, false)
	msgs, err := g.exec(g.family, ipvsCmdGetService, 0, ae)
	if err != nil {
		return nil, err
	}
	if len(msgs) != 1 {
		return nil, fmt.Errorf("get service: %d answers", len(msgs))
	}
	return decodeSvcMsg(msgs[0])
}

// services dumps all services of the netns.
func (g *genl) services() ([]*svc, error) {
	msgs, err := g.exec(g.family, ipvsCmdGetService, netlink.Dump, netlink.NewAttributeEncoder())
	if err != nil {
		return nil, err
	}
	out := make([]*svc, 0, len(msgs))
	for _, m := range msgs {
		s, err := decodeSvcMsg(m)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// dests dumps the real servers of s.
func (g *genl) dests(s *svc) ([]*dest, error) {
	ae := netlink.NewAttributeEncoder()
	encodeSvc(ae, s, false)
	msgs, err := g.exec(g.family, ipvsCmdGetDest, netlink.Dump, ae)
	if err != nil {
		return nil, err
	}
	out := make([]*dest, 0, len(msgs))
	for _, m := range msgs {
		d, err := decodeDestMsg(m, s.addr.Addr())
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// encodeSvc writes the service key; full adds the settings NEW and SET
// require.
func encodeSvc(ae *netlink.AttributeEncoder, s *svc, full bool) {
	ae.Nested(ipvsCmdAttrService, func(n *netlink.AttributeEncoder) error {
		n.Uint16(svcAttrAF, af(s.addr.Addr()))
		n.Uint16(svcAttrProtocol, s.proto)
		n.Bytes(svcAttrAddr, s.addr.Addr().AsSlice())
		n.Bytes(svcAttrPort, binary.BigEndian.AppendUint16(nil, s.addr.Port()))
		if full {
			n.String(svcAttrSchedName, s.sched)
			// struct ip_vs_flags { __u32 flags; __u32 mask; }
			f := binary.NativeEndian.AppendUint32(nil, s.flags)
			n.Bytes(svcAttrFlags, binary.NativeEndian.AppendUint32(f, 0xffffffff))
			n.Uint32(svcAttrTimeout, s.timeout)
			n.Uint32(svcAttrNetmask, s.netmask)
		}
		return nil
	})
}

// encodeDest writes a real server with all the settings NEW and SET need.
func encodeDest(ae *netlink.AttributeEncoder, s *svc, d *dest) {
	ae.Nested(ipvsCmdAttrDest, func(n *netlink.AttributeEncoder) error {
		n.Bytes(destAttrAddr, d.addr.Addr().AsSlice())
		n.Bytes(destAttrPort, binary.BigEndian.AppendUint16(nil, d.addr.Port()))
		n.Uint32(destAttrFwdMethod, d.fwd&fwdMask)
		n.Uint32(destAttrWeight, d.weight)
		n.Uint32(destAttrUThresh, 0)
		n.Uint32(destAttrLThresh, 0)
		if af(d.addr.Addr()) != af(s.addr.Addr()) {
			n.Uint16(destAttrAddrFamily, af(d.addr.Addr())) // tunnel to the other family
		}
		return nil
	})
}
