package qos

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"

	"github.com/circuit-cni/circuit/api"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Ingress shaping: the kernel cannot queue arriving packets, so a filter
// on ifname's ingress hook redirects them to an IFB device, where the same
// tree as for egress shapes them on their way back into the stack.

const ifbPrefix = "cifb-"

// ifbName derives the IFB's name from ifname within IFNAMSIZ-1 (15)
// characters: "cifb-eth0" while it fits, else "cifb-" and 10 hex digits of
// a hash, so long names do not collide by truncation.
func ifbName(ifname string) string {
	if len(ifbPrefix)+len(ifname) <= unix.IFNAMSIZ-1 {
		return ifbPrefix + ifname
	}
	sum := sha256.Sum256([]byte(ifname))
	return ifbPrefix + hex.EncodeToString(sum[:])[:unix.IFNAMSIZ-1-len(ifbPrefix)]
}

// ifbQueueLen sizes the queue HTB's default leaf takes from the device;
// an IFB defaults to 32 packets, which starves TCP.
const ifbQueueLen = 1000

// lookupIFB returns circuit's IFB for ifname, nil if there is none, and
// ErrInUse if the name is taken by a device that is not an IFB.
func lookupIFB(h *netlink.Handle, ifname string) (netlink.Link, error) {
	name := ifbName(ifname)
	l, err := h.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("look up %s: %w", name, err)
	}
	if l.Type() != "ifb" {
		return nil, &kindError{
			msg:  fmt.Sprintf("device %s exists but is a %s, not circuit's ifb; remove or rename it", name, l.Type()),
			kind: api.ErrInUse,
		}
	}
	return l, nil
}

func ensureIFB(h *netlink.Handle, link netlink.Link) (netlink.Link, error) {
	ifb, err := lookupIFB(h, link.Attrs().Name)
	if err != nil {
		return nil, err
	}
	name := ifbName(link.Attrs().Name)
	if ifb == nil {
		attrs := netlink.LinkAttrs{Name: name, MTU: link.Attrs().MTU, TxQLen: ifbQueueLen}
		if err := h.LinkAdd(&netlink.Ifb{LinkAttrs: attrs}); err != nil {
			return nil, fmt.Errorf("create %s: %w", name, err)
		}
		if ifb, err = h.LinkByName(name); err != nil {
			return nil, fmt.Errorf("look up %s: %w", name, err)
		}
	}
	if ifb.Attrs().Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(ifb); err != nil {
			return nil, fmt.Errorf("set %s up: %w", name, err)
		}
	}
	return ifb, nil
}

// installIngress shapes traffic arriving at link. The IFB is shaped
// before the redirect starts, so no packet passes it unshaped.
func installIngress(h *netlink.Handle, link netlink.Link, p Policy) error {
	ifb, err := ensureIFB(h, link)
	if err != nil {
		return err
	}
	if err := installTree(h, ifb, p); err != nil {
		return fmt.Errorf("%s: %w", ifb.Attrs().Name, err)
	}
	if err := ensureIngressQdisc(h, link); err != nil {
		return err
	}
	return ensureRedirect(h, link, ifb)
}

// ingressQdisc returns link's ingress or clsact qdisc, nil if none.
func ingressQdisc(h *netlink.Handle, link netlink.Link) (netlink.Qdisc, error) {
	qs, err := dump(func() ([]netlink.Qdisc, error) { return h.QdiscList(link) })
	if err != nil {
		return nil, fmt.Errorf("list qdiscs: %w", err)
	}
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_INGRESS && q.Attrs().LinkIndex == link.Attrs().Index {
			return q, nil
		}
	}
	return nil, nil
}

// ensureIngressQdisc adds ffff: ingress unless an ingress or clsact qdisc
// is already there; either one takes filters at ffff:fff2.
func ensureIngressQdisc(h *netlink.Handle, link netlink.Link) error {
	q, err := ingressQdisc(h, link)
	if err != nil || q != nil {
		return err
	}
	ing := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: link.Attrs().Index,
		Handle:    netlink.MakeHandle(0xffff, 0),
		Parent:    netlink.HANDLE_INGRESS,
	}}
	if err := h.QdiscAdd(ing); err != nil {
		return fmt.Errorf("add ingress qdisc: %w", err)
	}
	return nil
}

// ourFilters lists the filters at circuit's priority on link's ingress.
func ourFilters(h *netlink.Handle, link netlink.Link) (ours, all []netlink.Filter, err error) {
	all, err = dump(func() ([]netlink.Filter, error) { return h.FilterList(link, netlink.HANDLE_MIN_INGRESS) })
	if err != nil {
		return nil, nil, fmt.Errorf("list ingress filters: %w", err)
	}
	for _, f := range all {
		if f.Attrs().Priority == filterPrio {
			ours = append(ours, f)
		}
	}
	return ours, all, nil
}

// redirectsTo reports whether f is exactly circuit's redirect to ifb.
func redirectsTo(f netlink.Filter, ifb netlink.Link) bool {
	u, ok := f.(*netlink.U32)
	if !ok || len(u.Actions) != 1 {
		return false
	}
	m, ok := u.Actions[0].(*netlink.MirredAction)
	return ok && m.MirredAction == netlink.TCA_EGRESS_REDIR && m.Ifindex == ifb.Attrs().Index
}

func ensureRedirect(h *netlink.Handle, link, ifb netlink.Link) error {
	ours, _, err := ourFilters(h, link)
	if err != nil {
		return err
	}
	// Keep the filter when it redirects to this IFB and nothing else sits
	// at circuit's priority (u32 may also list action-less hash tables);
	// otherwise, e.g. after the IFB was recreated, replace it.
	redirects, other := 0, 0
	for _, f := range ours {
		u, ok := f.(*netlink.U32)
		switch {
		case ok && redirectsTo(f, ifb):
			redirects++
		case !ok || len(u.Actions) > 0:
			other++
		}
	}
	if redirects > 0 && other == 0 {
		return nil
	}
	if len(ours) > 0 {
		if err := delRedirect(h, link); err != nil {
			return err
		}
	}
	f := &netlink.U32{
		FilterAttrs: redirectAttrs(link),
		// A nil selector is u32's match-all: one zero key, terminal.
		Actions: []netlink.Action{netlink.NewMirredAction(ifb.Attrs().Index)},
	}
	if err := h.FilterAdd(f); err != nil {
		return fmt.Errorf("add redirect filter to %s: %w", ifb.Attrs().Name, err)
	}
	return nil
}

func redirectAttrs(link netlink.Link) netlink.FilterAttrs {
	return netlink.FilterAttrs{
		LinkIndex: link.Attrs().Index,
		Parent:    netlink.HANDLE_MIN_INGRESS,
		Priority:  filterPrio,
		Protocol:  unix.ETH_P_ALL,
	}
}

// delRedirect deletes everything at circuit's priority; handle 0 means
// the whole priority, never another one.
func delRedirect(h *netlink.Handle, link netlink.Link) error {
	f := &netlink.U32{FilterAttrs: redirectAttrs(link)}
	if err := h.FilterDel(f); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete redirect filter: %w", err)
	}
	return nil
}

// removeIngress undoes installIngress. link may be nil when ifname is
// gone; the IFB, which would otherwise outlive it, is still deleted.
func removeIngress(h *netlink.Handle, ifname string, link netlink.Link) error {
	if link != nil {
		if err := removeRedirect(h, link); err != nil {
			return err
		}
	}
	ifb, err := lookupIFB(h, ifname)
	if err != nil || ifb == nil {
		return err
	}
	if err := h.LinkDel(ifb); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete %s: %w", ifb.Attrs().Name, err)
	}
	return nil
}

// removeRedirect deletes circuit's filter, then the ingress qdisc if it is
// a plain ingress qdisc left without filters: a clsact qdisc, or one still
// carrying someone else's filters, stays.
func removeRedirect(h *netlink.Handle, link netlink.Link) error {
	q, err := ingressQdisc(h, link)
	if err != nil || q == nil {
		return err
	}
	ours, all, err := ourFilters(h, link)
	if err != nil {
		return err
	}
	if len(ours) > 0 {
		if err := delRedirect(h, link); err != nil {
			return err
		}
	}
	if q.Type() != "ingress" || len(all) > len(ours) {
		return nil
	}
	if err := h.QdiscDel(q); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete ingress qdisc: %w", err)
	}
	return nil
}

// readIngress reads circuit's ingress policy back, nil if none.
func readIngress(h *netlink.Handle, ifname string) (*Policy, error) {
	ifb, err := lookupIFB(h, ifname)
	if err != nil || ifb == nil {
		return nil, err
	}
	return readTree(h, ifb)
}
