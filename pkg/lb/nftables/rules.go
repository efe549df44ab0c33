package nftables

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// rule is what circuit reads back of a rule: where it is and its comment.
// (google/nftables would decode every expression, and fails on the
// conntrack loads with a direction that circuit writes itself.)
type rule struct {
	chain   string
	handle  uint64
	comment string
}

func (r rule) ref() *nftables.Rule {
	return &nftables.Rule{Table: table(), Chain: &nftables.Chain{Name: r.chain, Table: table()}, Handle: r.handle}
}

// getRules dumps the rules of one chain of the table (none if the chain
// does not exist).
func getRules(c *nlConn, chain string) ([]rule, error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_RULE_TABLE, tableName)
	ae.String(unix.NFTA_RULE_CHAIN, chain)
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	m, err := c.Send(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE),
			Flags: netlink.Request | netlink.Dump},
		Data: append(nfgenmsg(unix.NFPROTO_INET, 0), attrs...),
	})
	if err != nil {
		return nil, fmt.Errorf("list chain %s: %w", chain, err)
	}
	var out []rule
	for {
		replies, err := receive(c)
		if err != nil {
			return nil, fmt.Errorf("list chain %s: %w", chain, err)
		}
		for _, r := range replies {
			switch {
			case r.seq != m.Header.Sequence:
			case r.typ == netlink.Done:
				return out, nil
			case r.ack && r.errno == unix.ENOENT:
				return out, nil
			case r.ack && r.errno != 0:
				return nil, fmt.Errorf("list chain %s: %w", chain, r.errno)
			case r.ack:
			default:
				ru, err := decodeRule(r.data)
				if err != nil {
					return nil, fmt.Errorf("list chain %s: %w", chain, err)
				}
				if ru.chain == chain {
					out = append(out, ru)
				}
			}
		}
	}
}

func decodeRule(b []byte) (rule, error) {
	var r rule
	if len(b) < 4 {
		return r, fmt.Errorf("short rule message")
	}
	ad, err := netlink.NewAttributeDecoder(b[4:])
	if err != nil {
		return r, err
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_RULE_CHAIN:
			r.chain = ad.String()
		case unix.NFTA_RULE_HANDLE:
			r.handle = binary.BigEndian.Uint64(ad.Bytes())
		case unix.NFTA_RULE_USERDATA:
			r.comment, _ = userdata.GetString(ad.Bytes(), userdata.TypeComment)
		}
	}
	return r, ad.Err()
}
