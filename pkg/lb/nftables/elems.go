package nftables

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// elem is one set element read back by key.
type elem struct {
	key, data      []byte
	packets, bytes uint64 // its counter, if the set counts
}

// getChunk bounds the keys asked in one request.
const getChunk = 64

// getElems reads the elements with the given keys of a table-wide set,
// one request per chunk of keys (google/nftables can only dump a whole
// set, and the table-wide sets hold every service's elements). Missing
// keys are left out of the result.
func getElems(c *nlConn, set string, keys [][]byte) ([]elem, error) {
	var out []elem
	for len(keys) > 0 {
		n := min(len(keys), getChunk)
		got, missing, err := getSome(c, set, keys[:n])
		if err != nil {
			return nil, err
		}
		out = append(out, got...)
		// The kernel answers in order and stops at the first missing key.
		keys = keys[len(got):]
		if missing {
			keys = keys[1:]
		}
	}
	return out, nil
}

// getPrefix reads the elements with keys[0], keys[1], ... up to the first
// missing one: a service's header and targets are at consecutive indexes.
func getPrefix(c *nlConn, set string, key func(i int) []byte) ([]elem, error) {
	var out []elem
	for {
		keys := make([][]byte, getChunk)
		for i := range keys {
			keys[i] = key(len(out) + i)
		}
		got, missing, err := getSome(c, set, keys)
		if err != nil {
			return nil, err
		}
		out = append(out, got...)
		if missing {
			return out, nil
		}
	}
}

func getSome(c *nlConn, set string, keys [][]byte) (got []elem, missing bool, err error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, tableName)
	ae.String(unix.NFTA_SET_ELEM_LIST_SET, set)
	ae.Nested(unix.NFTA_SET_ELEM_LIST_ELEMENTS, func(l *netlink.AttributeEncoder) error {
		for _, k := range keys {
			l.Nested(unix.NFTA_LIST_ELEM, func(e *netlink.AttributeEncoder) error {
				e.Nested(unix.NFTA_SET_ELEM_KEY, func(v *netlink.AttributeEncoder) error {
					v.Bytes(unix.NFTA_DATA_VALUE, k)
					return nil
				})
				return nil
			})
		}
		return nil
	})
	attrs, err := ae.Encode()
	if err != nil {
		return nil, false, err
	}
	m, err := c.Send(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM),
			Flags: netlink.Request | netlink.Acknowledge},
		Data: append(nfgenmsg(unix.NFPROTO_INET, 0), attrs...),
	})
	if err != nil {
		return nil, false, fmt.Errorf("get elements of %s: %w", set, err)
	}
	for {
		replies, err := receive(c)
		if err != nil {
			return nil, false, fmt.Errorf("get elements of %s: %w", set, err)
		}
		for _, r := range replies {
			switch {
			case r.ack && r.seq == m.Header.Sequence && r.errno == unix.ENOENT:
				return got, true, nil
			case r.ack && r.seq == m.Header.Sequence && r.errno != 0:
				return nil, false, fmt.Errorf("get elements of %s: %w", set, r.errno)
			case r.ack && r.seq == m.Header.Sequence:
				return got, false, nil
			case r.seq == m.Header.Sequence:
				es, err := decodeElems(r.data)
				if err != nil {
					return nil, false, fmt.Errorf("get elements of %s: %w", set, err)
				}
				got = append(got, es...)
			}
		}
	}
}

// decodeElems reads the elements of an NFT_MSG_NEWSETELEM message.
func decodeElems(b []byte) ([]elem, error) {
	if len(b) < 4 {
		return nil, errors.New("short element message")
	}
	ad, err := netlink.NewAttributeDecoder(b[4:])
	if err != nil {
		return nil, err
	}
	var out []elem
	for ad.Next() {
		if ad.Type() != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			continue
		}
		ad.Nested(func(l *netlink.AttributeDecoder) error {
			for l.Next() {
				var e elem
				l.Nested(func(d *netlink.AttributeDecoder) error { return decodeElem(d, &e) })
				out = append(out, e)
			}
			return nil
		})
	}
	return out, ad.Err()
}

func decodeElem(d *netlink.AttributeDecoder, e *elem) error {
	for d.Next() {
		switch d.Type() {
		case unix.NFTA_SET_ELEM_KEY:
			d.Nested(func(v *netlink.AttributeDecoder) error { e.key = dataValue(v); return nil })
		case unix.NFTA_SET_ELEM_DATA:
			d.Nested(func(v *netlink.AttributeDecoder) error { e.data = dataValue(v); return nil })
		case unix.NFTA_SET_ELEM_EXPR:
			d.Nested(func(x *netlink.AttributeDecoder) error { decodeCounter(x, e); return nil })
		case nftables.NFTA_SET_ELEM_EXPRESSIONS:
			d.Nested(func(l *netlink.AttributeDecoder) error {
				for l.Next() {
					l.Nested(func(x *netlink.AttributeDecoder) error { decodeCounter(x, e); return nil })
				}
				return nil
			})
		}
	}
	return nil
}

func dataValue(v *netlink.AttributeDecoder) []byte {
	for v.Next() {
		if v.Type() == unix.NFTA_DATA_VALUE {
			return bytes.Clone(v.Bytes())
		}
	}
	return nil
}

// decodeCounter reads a counter expression (name, then data).
func decodeCounter(x *netlink.AttributeDecoder, e *elem) {
	counter := false
	for x.Next() {
		switch x.Type() {
		case unix.NFTA_EXPR_NAME:
			counter = x.String() == "counter"
		case unix.NFTA_EXPR_DATA:
			if !counter {
				continue
			}
			x.Nested(func(c *netlink.AttributeDecoder) error {
				c.ByteOrder = binary.BigEndian
				for c.Next() {
					switch c.Type() {
					case unix.NFTA_COUNTER_BYTES:
						e.bytes = c.Uint64()
					case unix.NFTA_COUNTER_PACKETS:
						e.packets = c.Uint64()
					}
				}
				return nil
			})
		}
	}
}
