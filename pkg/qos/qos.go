package qos

import (
	"errors"
	"fmt"
	"sync"

	"github.com/circuit-cni/circuit/api"
	"github.com/vishvananda/netlink"
)

// Apply shapes ifname in the netns at nsPath (a netns file such as
// /var/run/netns/x, /proc/PID/ns/net or a bind-mount pin) according to p,
// replacing what an earlier Apply installed. A zero policy is a Reset.
//
// Nothing changes when Apply fails: it refuses up front when the kernel
// lacks netem (ErrUnsupported) or ifname carries a root qdisc circuit did
// not install (ErrInUse), and puts the previous state back when a kernel
// call fails part-way.
func Apply(nsPath, ifname string, p Policy) error {
	mu.Lock()
	defer mu.Unlock()
	if err := apply(nsPath, ifname, p); err != nil {
		return fmt.Errorf("apply qos to %s: %w", ifname, err)
	}
	return nil
}

// mu keeps this process's read-modify-write sequences on traffic control
// from interleaving; each takes milliseconds.
var mu sync.Mutex

func apply(nsPath, ifname string, p Policy) error {
	p, err := normalize(p)
	if err != nil {
		return err
	}
	if err := checkNames(nsPath, ifname); err != nil {
		return err
	}
	if p.IsZero() {
		return reset(nsPath, ifname)
	}
	h, err := openNetns(nsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	link, err := linkByName(h, ifname)
	if err != nil {
		return err
	}
	if p.NeedsNetem() {
		if err := netemSupported(h); err != nil {
			return err
		}
	}
	egress, ingress := directions(p.Direction)
	if err := preflight(h, link, egress, ingress); err != nil {
		return err
	}
	prev, err := snapshot(h, link)
	if err != nil {
		return err
	}
	if err := install(h, link, p, egress, ingress); err != nil {
		if rerr := restore(h, link, prev); rerr != nil {
			return fmt.Errorf("%w (rolling back failed too: %v)", err, rerr)
		}
		return err
	}
	return nil
}

// preflight refuses foreign objects before anything is changed.
func preflight(h *netlink.Handle, link netlink.Link, egress, ingress bool) error {
	if egress {
		if _, err := checkRoot(h, link); err != nil {
			return err
		}
	}
	if !ingress {
		return nil
	}
	ifb, err := lookupIFB(h, link.Attrs().Name)
	if err != nil || ifb == nil {
		return err
	}
	_, err = checkRoot(h, ifb)
	return err
}

// state is what circuit had installed on an interface, per direction.
type state struct{ egress, ingress *Policy }

func snapshot(h *netlink.Handle, link netlink.Link) (state, error) {
	eg, err := readTree(h, link)
	if err != nil {
		return state{}, fmt.Errorf("read current egress qos: %w", err)
	}
	in, err := readIngress(h, link.Attrs().Name)
	if err != nil {
		return state{}, fmt.Errorf("read current ingress qos: %w", err)
	}
	return state{eg, in}, nil
}

// stepHook runs after each step of install; tests make it fail to check
// the rollback.
var stepHook = func(step string) error { return nil }

func install(h *netlink.Handle, link netlink.Link, p Policy, egress, ingress bool) error {
	if egress {
		if err := installTree(h, link, p); err != nil {
			return fmt.Errorf("egress: %w", err)
		}
	} else if err := removeTree(h, link); err != nil {
		return fmt.Errorf("remove egress: %w", err)
	}
	if err := stepHook("egress"); err != nil {
		return err
	}
	if ingress {
		if err := installIngress(h, link, p); err != nil {
			return fmt.Errorf("ingress: %w", err)
		}
	} else if err := removeIngress(h, link.Attrs().Name, link); err != nil {
		return fmt.Errorf("remove ingress: %w", err)
	}
	return stepHook("ingress")
}

// restore puts a snapshot back, best effort, reporting every failure.
func restore(h *netlink.Handle, link netlink.Link, s state) error {
	var errs []error
	if s.egress != nil {
		errs = append(errs, installTree(h, link, *s.egress))
	} else {
		errs = append(errs, removeTree(h, link))
	}
	if s.ingress != nil {
		errs = append(errs, installIngress(h, link, *s.ingress))
	} else {
		errs = append(errs, removeIngress(h, link.Attrs().Name, link))
	}
	return api.Join(errs...)
}

// Reset removes what circuit installed on ifname: its root qdisc (by
// handle), its ingress redirect filter and its IFB. Foreign qdiscs and
// filters stay. A missing netns, interface or object is not an error.
func Reset(nsPath, ifname string) error {
	mu.Lock()
	defer mu.Unlock()
	if err := checkNames(nsPath, ifname); err != nil {
		return fmt.Errorf("reset qos on %s: %w", ifname, err)
	}
	if err := reset(nsPath, ifname); err != nil {
		return fmt.Errorf("reset qos on %s: %w", ifname, err)
	}
	return nil
}

func reset(nsPath, ifname string) error {
	h, err := openNetns(nsPath)
	if errors.Is(err, api.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	defer h.Close()
	link, err := linkByName(h, ifname)
	if errors.Is(err, api.ErrNotFound) {
		link = nil // its IFB may still be there
	} else if err != nil {
		return err
	}
	if link != nil {
		if err := removeTree(h, link); err != nil {
			return fmt.Errorf("egress: %w", err)
		}
	}
	if err := removeIngress(h, ifname, link); err != nil {
		return fmt.Errorf("ingress: %w", err)
	}
	return nil
}

// Stats returns the counters of circuit's qdiscs on ifname, egress from
// its root qdisc and ingress from its IFB's; nil for a direction that is
// not shaped.
func Stats(nsPath, ifname string) (egress, ingress *Counters, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("read qos counters of %s: %w", ifname, err)
		}
	}()
	if err := checkNames(nsPath, ifname); err != nil {
		return nil, nil, err
	}
	h, err := openNetns(nsPath)
	if err != nil {
		return nil, nil, err
	}
	defer h.Close()
	link, err := linkByName(h, ifname)
	if err != nil {
		return nil, nil, err
	}
	if egress, err = counters(h, link); err != nil {
		return nil, nil, err
	}
	ifb, err := lookupIFB(h, ifname)
	if err != nil || ifb == nil {
		return egress, nil, err
	}
	if ingress, err = counters(h, ifb); err != nil {
		return nil, nil, err
	}
	return egress, ingress, nil
}

func directions(dir Direction) (egress, ingress bool) {
	switch dir {
	case Ingress:
		return false, true
	case Both:
		return true, true
	default:
		return true, false
	}
}

func checkNames(nsPath, ifname string) error {
	if nsPath == "" {
		return invalidPolicy("no network namespace given")
	}
	if ifname == "" || len(ifname) > 15 {
		return invalidPolicy(fmt.Sprintf("interface name %q must be 1 to 15 characters", ifname))
	}
	return nil
}

// normalize validates p by circuit's rules (package api, the same ones qos
// set applies) and fills in the defaults: Ceiling is Rate when unset, and a
// lone Ceiling is also the Rate.
func normalize(p Policy) (Policy, error) {
	if err := api.ValidDirection(api.Direction(p.Direction)); err != nil {
		return p, err
	}
	if p.Rate == 0 {
		p.Rate = p.Ceiling
	}
	if p.Ceiling == 0 {
		p.Ceiling = p.Rate
	}
	if err := api.ValidRate("rate", p.Rate); err != nil {
		return p, err
	}
	if p.Ceiling < p.Rate {
		return p, invalidPolicy(fmt.Sprintf("ceiling %s is below rate %s", api.FormatRate(p.Ceiling), api.FormatRate(p.Rate)))
	}
	if err := api.ValidDelay("delay", p.Delay); err != nil {
		return p, err
	}
	if err := api.ValidDelay("jitter", p.Jitter); err != nil {
		return p, err
	}
	if p.Jitter > 0 && p.Delay == 0 {
		return p, invalidPolicy("jitter needs a delay")
	}
	return p, api.ValidLoss(p.Loss)
}
