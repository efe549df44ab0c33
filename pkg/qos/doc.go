// Package qos shapes the traffic of one interface inside a network namespace
// with the kernel's traffic control, spoken to over netlink only.
//
// What circuit installs, and how it recognises its own objects later:
//
//	egress (traffic leaving ifname):
//	  root qdisc   c1c0:     htb, default class c1c0:10
//	  class        c1c0:1    rate = ceil = Ceiling (the cap the leaf borrows up to)
//	  class        c1c0:10   rate = Rate, ceil = Ceiling
//	  qdisc        c1c1:     netem under c1c0:10, only with delay/jitter/loss
//	  A policy with netem but no rate puts netem itself at root as c1c0:.
//
//	ingress (traffic arriving at ifname):
//	  device       cifb-<ifname> (or cifb-<hash>), an IFB in the same netns,
//	               carrying the egress tree above as its root
//	  qdisc        ffff:     ingress on ifname (an existing ingress or clsact
//	               qdisc is reused)
//	  filter       u32 match-all at priority 0xc1c0 (49600), protocol all,
//	               action mirred egress redirect to the IFB
//
// The major 0xc1c0 ("circuit") stays clear of 1:, which people pick by hand,
// and of the 8000+ range the kernel hands out. A root qdisc with any other
// non-zero handle is somebody else's: Apply refuses it with ErrInUse and
// Reset leaves it alone.
package qos
