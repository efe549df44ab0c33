package nftables

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

// commentPrefix starts the comment on a service's rules. Every rule of a
// service names it ("circuit service v2 NAME"), so that its rules can be
// found in the chains it shares; the first one records what they were
// made for, so that Ensure can clean up after a change of address without
// scanning other services: "circuit service v2 NAME VIP PROTO KIND SECS",
// KIND being numgen or jhash (rr and wrr differ only in their slots, so
// switching between them leaves the rules alone; the header of the
// targets map tells which). The first layout wrote "circuit service NAME
// VIP PROTO SCHED SECS" on its own chain's first rule.
const (
	commentPrefix = "circuit service"
	layoutTag     = "v2"
)

// recorded is what a service chain's comment says about it.
type recorded struct {
	v1          bool
	vip         netip.AddrPort
	proto       uint8
	scheduler   string
	persistence time.Duration
}

func serviceComment(s *spec.Spec) string {
	kind := "numgen"
	if s.Scheduler == "sh" {
		kind = "jhash"
	}
	return fmt.Sprintf("%s %s %s %s %s %s %d", commentPrefix, layoutTag, s.Name, s.VIP, s.Protocol, kind,
		int64(s.Persistence/time.Second))
}

// ownerComment is the comment of a service's rules but the first.
func ownerComment(name string) string { return commentPrefix + " " + layoutTag + " " + name }

// ownerOf is the service a rule of the current layout belongs to, by its
// comment.
func ownerOf(c string) (string, bool) {
	rest, ok := strings.CutPrefix(c, commentPrefix+" "+layoutTag+" ")
	name, _, _ := strings.Cut(rest, " ")
	return name, ok && name != ""
}

func parseComment(c string) (recorded, bool) {
	rest, ok := strings.CutPrefix(c, commentPrefix+" ")
	if !ok {
		return recorded{}, false
	}
	f := strings.Fields(rest)
	v1 := len(f) == 0 || f[0] != layoutTag
	if !v1 {
		f = f[1:]
	}
	if len(f) < 5 {
		return recorded{}, false
	}
	vip, err := api.ParseAddrPort(f[1])
	secs, err2 := strconv.ParseInt(f[4], 10, 64)
	if err != nil || err2 != nil {
		return recorded{}, false
	}
	sched := f[3]
	if !v1 { // the rule's kind; the header tells rr from wrr
		sched = map[string]string{"jhash": "sh", "numgen": "rr"}[sched]
	}
	return recorded{v1: v1, vip: vip, proto: api.Protocols[f[2]], scheduler: sched,
		persistence: time.Duration(secs) * time.Second}, true
}

// entry is one target in a service's roster (targets map).
type entry struct {
	addr   netip.AddrPort
	weight int
}

// current is what the kernel holds for one service.
type current struct {
	rec    recorded
	hasRec bool
	// Current layout: the service's rules in its pick and stick chains.
	rules, stickRules []rule
	// Current layout: the header and targets of the targets map.
	hdr    header
	hasHdr bool
	roster []entry
	// First layout: the elements of tg-NAME.
	v1       bool
	v1Target []netip.AddrPort
}

func (c *current) v6() bool { return c.rec.vip.Addr().Is6() }

// readService reads a service's record; nil means it is not programmed.
// In the current layout its rules in its pick chain exist exactly as long
// as the service, and the first says where its elements are keyed; in the
// first layout, its own chain.
func (b *Backend) readService(name string) (*current, error) {
	cur := &current{}
	rules, err := b.ownRules(pickChain(name), name)
	if err != nil {
		return nil, err
	}
	for _, r := range rules {
		if !cur.hasRec {
			cur.rec, cur.hasRec = parseComment(r.comment)
		}
	}
	cur.rules = rules
	if len(rules) == 0 {
		return b.readV1(name)
	}
	cur.hdr, cur.hasHdr, cur.roster, err = b.readRoster(cur.rec.vip, cur.rec.proto)
	if err != nil {
		return nil, err
	}
	if cur.hasHdr {
		cur.rec.scheduler = cur.hdr.scheduler()
		if cur.hdr.persistence > 0 {
			if cur.stickRules, err = b.ownRules(stickChain(name), name); err != nil {
				return nil, err
			}
		}
	}
	return cur, nil
}

// ownRules reads the rules of a shared chain that belong to a service.
func (b *Backend) ownRules(chain, name string) ([]rule, error) {
	rules, err := getRules(b.nl, chain)
	if err != nil {
		return nil, err
	}
	var out []rule
	for _, r := range rules {
		if owner, ok := ownerOf(r.comment); ok && owner == name {
			out = append(out, r)
		}
	}
	return out, nil
}

// readV1 reads a service of the first layout: its own chain (whose first
// rule's comment is its record) and its target set.
func (b *Backend) readV1(name string) (*current, error) {
	rules, err := getRules(b.nl, serviceChain(name))
	if err != nil {
		return nil, err
	}
	if len(rules) == 0 {
		// A dump of a missing chain's rules is empty, not an error.
		if _, err := b.conn.ListChain(table(), serviceChain(name)); isNotExist(err) {
			return nil, nil
		}
	}
	cur := &current{v1: true}
	if len(rules) > 0 {
		cur.rec, cur.hasRec = parseComment(rules[0].comment)
	}
	return cur, b.readV1Targets(name, cur)
}

// readRoster reads a service's header and targets (one request for up to
// 63 targets): indexes headerIndex, 0, 1, ... of the targets map.
func (b *Backend) readRoster(vip netip.AddrPort, proto uint8) (header, bool, []entry, error) {
	v6 := vip.Addr().Is6()
	es, err := getPrefix(b.nl, targetsMap(v6), func(i int) []byte {
		if i == 0 {
			return indexKey(vip, proto, headerIndex)
		}
		return indexKey(vip, proto, uint32(i-1))
	})
	if err != nil || len(es) == 0 {
		return header{}, false, nil, err
	}
	hdr, ok := parseHeaderData(es[0].data)
	if !ok {
		return header{}, false, nil, fmt.Errorf("map %s: bad header of %s", targetsMap(v6), vip)
	}
	roster := make([]entry, 0, len(es)-1)
	for _, e := range es[1:] {
		ap, w, ok := parseRosterData(e.data)
		if !ok {
			return header{}, false, nil, fmt.Errorf("map %s: bad target of %s", targetsMap(v6), vip)
		}
		roster = append(roster, entry{ap, w})
	}
	return hdr, true, roster, nil
}

// readV1Targets reads the first layout's target set.
func (b *Backend) readV1Targets(name string, cur *current) error {
	tg, err := b.conn.GetSetByName(table(), v1TargetSet(name))
	if isNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("get set %s: %w", v1TargetSet(name), err)
	}
	elems, err := b.conn.GetSetElements(tg)
	if err != nil {
		return fmt.Errorf("list set %s: %w", v1TargetSet(name), err)
	}
	for _, e := range elems {
		if ap, ok := parseTargetKey(e.Key); ok {
			cur.v1Target = append(cur.v1Target, ap)
		}
	}
	return nil
}

// fallbackRecord fills the record from the caller's service when the
// chain's comment is unreadable.
func (c *current) fallbackRecord(s *spec.Spec) {
	if !c.hasRec && s != nil {
		c.rec = recorded{v1: true, vip: s.VIP, proto: s.Proto, scheduler: s.Scheduler, persistence: s.Persistence}
	}
}
