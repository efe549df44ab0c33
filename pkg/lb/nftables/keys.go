package nftables

import (
	"encoding/binary"
	"net/netip"

	"github.com/google/nftables/binaryutil"
)

// Set keys and data are concatenations; the kernel pads each field to 4
// bytes, so these encoders must produce exactly what the rules load into
// registers. Slot numbers, indexes and weights are "mark" fields: host
// byte order, as numgen and jhash write them.

// tupleKey encodes addr . inet_proto . inet_service: a service's VIP tuple.
func tupleKey(ap netip.AddrPort, proto uint8) []byte {
	b := ap.Addr().AsSlice()
	b = append(b, proto, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, ap.Port())
	return append(b, 0, 0) // pad the port to 4 bytes
}

// targetKey encodes addr . inet_service: a target (slot map data).
func targetKey(ap netip.AddrPort) []byte {
	b := binary.BigEndian.AppendUint16(ap.Addr().AsSlice(), ap.Port())
	return append(b, 0, 0)
}

func mark(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

// slotKey is VIP tuple . slot (slots map).
func slotKey(vip netip.AddrPort, proto uint8, slot uint32) []byte {
	return append(tupleKey(vip, proto), mark(slot)...)
}

// indexKey is VIP tuple . index (targets map).
func indexKey(vip netip.AddrPort, proto uint8, i uint32) []byte {
	return append(tupleKey(vip, proto), mark(i)...)
}

// pairKey is VIP tuple . target (per-target counters).
func pairKey(vip netip.AddrPort, proto uint8, t netip.AddrPort) []byte {
	return append(tupleKey(vip, proto), targetKey(t)...)
}

// rosterData is target . weight (targets map data).
func rosterData(t netip.AddrPort, weight int) []byte {
	return append(targetKey(t), mark(uint32(weight))...)
}

func parseRosterData(b []byte) (netip.AddrPort, int, bool) {
	if len(b) != 12 && len(b) != 24 {
		return netip.AddrPort{}, 0, false
	}
	ap, ok := parseTargetKey(b[:len(b)-4])
	return ap, int(binaryutil.NativeEndian.Uint32(b[len(b)-4:])), ok
}

// parseTargetKey decodes targetKey.
func parseTargetKey(b []byte) (netip.AddrPort, bool) {
	if len(b) != 8 && len(b) != 20 {
		return netip.AddrPort{}, false
	}
	a, _ := netip.AddrFromSlice(b[:len(b)-4])
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[len(b)-4:])), true
}

// parseTupleKey decodes tupleKey.
func parseTupleKey(b []byte) (netip.AddrPort, uint8, bool) {
	if len(b) != 12 && len(b) != 24 {
		return netip.AddrPort{}, 0, false
	}
	n := len(b) - 8
	a, _ := netip.AddrFromSlice(b[:n])
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[n+4:])), b[n], true
}

// headerIndex is the index of a service's header in the targets map; the
// targets themselves are at 0..N-1.
const headerIndex = ^uint32(0)

// header is what the targets map records about a service besides its
// targets: that it is in this layout, and what its rules were written for,
// so that a target change can tell when the rules must change too.
type header struct {
	slots       uint32 // numgen/jhash modulus
	hash        bool   // the rule hashes the client (sh), else numgen
	weighted    bool   // slots follow the weights (wrr, sh), else 1 each (rr)
	persistence uint32 // seconds; 0: none
}

// scheduler is the scheduler the header was written for.
func (h header) scheduler() string {
	switch {
	case h.hash:
		return "sh"
	case h.weighted:
		return "wrr"
	}
	return "rr"
}

// headerData spells the header in the shape of rosterData: persistence
// in the address field, flags in the port, the slot count as the weight.
func headerData(h header, v6 bool) []byte {
	addr := make([]byte, 4, 16)
	binary.BigEndian.PutUint32(addr, h.persistence)
	if v6 {
		addr = addr[:16]
	}
	var flags uint16
	if h.hash {
		flags |= 1
	}
	if h.weighted {
		flags |= 2
	}
	b := binary.BigEndian.AppendUint16(addr, flags)
	return append(append(b, 0, 0), mark(h.slots)...)
}

func parseHeaderData(b []byte) (header, bool) {
	if len(b) != 12 && len(b) != 24 {
		return header{}, false
	}
	n := len(b) - 8
	return header{
		persistence: binary.BigEndian.Uint32(b[:4]),
		hash:        binary.BigEndian.Uint16(b[n:])&1 != 0,
		weighted:    binary.BigEndian.Uint16(b[n:])&2 != 0,
		slots:       binaryutil.NativeEndian.Uint32(b[len(b)-4:]),
	}, true
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
