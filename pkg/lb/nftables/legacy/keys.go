package legacy

import (
	"encoding/binary"
	"net/netip"
)

// Set keys are concatenations; the kernel pads each field to 4 bytes, so
// these encoders must produce exactly what the rules load into registers.

// tupleKey encodes addr . inet_proto . inet_service (services/flows key).
func tupleKey(ap netip.AddrPort, proto uint8) []byte {
	b := ap.Addr().AsSlice()
	b = append(b, proto, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, ap.Port())
	return append(b, 0, 0) // pad the port to 4 bytes
}

// targetKey encodes addr . inet_service (target set key, affinity data).
func targetKey(ap netip.AddrPort) []byte {
	b := binary.BigEndian.AppendUint16(ap.Addr().AsSlice(), ap.Port())
	return append(b, 0, 0)
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

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
