package integration

import (
	"os/exec"
	"strings"
	"testing"
)

// ipvsadm lists the kernel's IPVS table numerically, or "" without ipvsadm.
func ipvsadm(t *testing.T, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("ipvsadm"); err != nil {
		return ""
	}
	out, err := exec.Command("ipvsadm", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ipvsadm %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// The same traffic as TestLBRuncHTTPD, through the IPVS backend and the
// CLI: two runc httpds behind IPVS services, rr, wrr weights, an IPVS-only
// scheduler, remove, delete, restore, and a foreign IPVS service left as
// it was. Needs a kernel with IPVS: it runs in the VM tier.
func TestLBRuncHTTPDIPVS(t *testing.T) {
	if !kernelHasIPVS() {
		t.Skip("kernel has no IPVS (the VM tier runs this)")
	}
	c := newCLI(t)
	const (
		vipRR  = "10.220.61.1:80"
		vipWRR = "10.220.61.2:80"
		vipLC  = "10.220.61.3:80"
	)
	haveAdm := ipvsadm(t, "-Ln") != ""
	if haveAdm {
		// A service circuit did not make, on an address circuit never uses.
		ipvsadm(t, "-A", "-t", "10.220.61.250:8080", "-s", "rr")
		ipvsadm(t, "-a", "-t", "10.220.61.250:8080", "-r", "10.220.59.9:8080", "-m", "-w", "7")
		t.Cleanup(func() { exec.Command("ipvsadm", "-D", "-t", "10.220.61.250:8080").Run() })
	}
	foreign := func() string {
		var keep []string
		for _, l := range strings.Split(ipvsadm(t, "-Ln", "-t", "10.220.61.250:8080"), "\n") {
			if strings.Contains(l, "10.220.") {
				f := strings.Fields(l) // counters change; address, method and weight don't
				keep = append(keep, strings.Join(f[:min(4, len(f))], " "))
			}
		}
		return strings.Join(keep, "\n")
	}
	foreignBefore := foreign()

	c.must("network", "create", c.conf("ipvsnet", "10.220.51.0/24"))
	a := c.httpdContainer("ipvsnet", "iva")
	b := c.httpdContainer("ipvsnet", "ivb")
	targetA, targetB := a.ip+":80", b.ip+":80"

	c.lbService("ivrr", "--backend", "ipvs", vipRR)
	c.lbMust("service ivrr updated\n", "lb", "add", "ivrr", targetA, targetB)
	if got := hostRequests(t, vipRR, 20); got[a.page] != 10 || got[b.page] != 10 {
		t.Errorf("ipvs rr: 20 requests gave %v, want 10 each", got)
	}
	if st := c.lbShow("ivrr"); st.Backend != "ipvs" {
		t.Errorf("backend %q, want ipvs", st.Backend)
	}

	c.lbService("ivwrr", "--backend", "ipvs", "--scheduler", "wrr", vipWRR)
	c.lbMust("service ivwrr updated\n", "lb", "add", "ivwrr", "--weight", "3", targetA)
	c.lbMust("service ivwrr updated\n", "lb", "add", "ivwrr", targetB)
	if got := hostRequests(t, vipWRR, 40); got[a.page] < 24 || got[a.page] > 36 {
		t.Errorf("ipvs wrr 3:1: 40 requests gave %v, want 24-36 for the weight-3 target", got)
	}

	// A scheduler only IPVS has. Sequential requests each end before the
	// next, so least-connection alternates.
	c.lbService("ivlc", "--backend", "ipvs", "--scheduler", "lc", vipLC)
	c.lbMust("service ivlc updated\n", "lb", "add", "ivlc", targetA, targetB)
	if got := hostRequests(t, vipLC, 10); got[a.page]+got[b.page] != 10 || got[a.page] == 0 || got[b.page] == 0 {
		t.Errorf("ipvs lc: 10 requests gave %v, want both targets used", got)
	}

	// A flushed service comes back with restore.
	if haveAdm {
		ipvsadm(t, "-D", "-t", vipRR)
		out := c.must("restore")
		if !strings.Contains(out, "restored service ivrr") {
			t.Errorf("restore after a flush printed:\n%s", out)
		}
		if got := hostRequests(t, vipRR, 4); got[a.page] != 2 || got[b.page] != 2 {
			t.Errorf("after restore: %v", got)
		}
		if out := c.must("restore"); strings.Contains(out, "restored") {
			t.Errorf("second restore did something:\n%s", out)
		}
	}

	c.lbMust("service ivrr updated\n", "lb", "remove", "ivrr", targetB)
	if got := hostRequests(t, vipRR, 6); got[a.page] != 6 {
		t.Errorf("after remove: %v, want all 6 on the remaining target", got)
	}
	for _, name := range []string{"ivrr", "ivwrr", "ivlc"} {
		c.lbMust("service "+name+" removed\n", "lb", "delete", name)
	}
	if haveAdm {
		if l := ipvsadm(t, "-Ln"); strings.Contains(l, "10.220.61.1:") || strings.Contains(l, "10.220.61.2:") || strings.Contains(l, "10.220.61.3:") {
			t.Errorf("IPVS services left after delete:\n%s", l)
		}
		if after := foreign(); after != foreignBefore || !strings.Contains(after, "10.220.59.9:8080") {
			t.Errorf("foreign IPVS service changed:\nbefore %s\nafter  %s", foreignBefore, after)
		}
	}
	if out, err := exec.Command("ip", "link", "show", "circuit-lb0").CombinedOutput(); err == nil {
		t.Errorf("circuit-lb0 left after the last service:\n%s", out)
	}
}

// An IPVS service circuit did not make, on the very address circuit is
// asked to use, is never adopted, rewritten or deleted: lb create refuses
// naming it; and a service of circuit's that someone changed behind its
// back is no longer circuit's to delete. Needs IPVS: the VM tier.
func TestLBIPVSForeignSameAddress(t *testing.T) {
	if !kernelHasIPVS() {
		t.Skip("kernel has no IPVS (the VM tier runs this)")
	}
	c := newCLI(t)
	if ipvsadm(t, "-Ln") == "" {
		t.Skip("needs ipvsadm to make a foreign service")
	}
	const vip, mine = "10.220.62.1:80", "10.220.62.2:80"
	ipvsadm(t, "-A", "-t", vip, "-s", "wlc")
	ipvsadm(t, "-a", "-t", vip, "-r", "10.220.59.9:8080", "-m", "-w", "7")
	t.Cleanup(func() { exec.Command("ipvsadm", "-D", "-t", vip).Run() })
	show := func(addr string) string {
		var keep []string
		for _, l := range strings.Split(ipvsadm(t, "-Ln", "-t", addr), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && (f[0] == "TCP" || f[0] == "->") && strings.Contains(l, "10.220.") {
				keep = append(keep, strings.Join(f[:min(4, len(f))], " "))
			}
		}
		return strings.Join(keep, "\n")
	}
	before := show(vip)

	_, stderr, err := c.run("", "lb", "create", "taken", vip, "--backend", "ipvs")
	secOneLine(t, "lb create on a foreign IPVS service's address", err, stderr, vip, "not circuit's")
	if after := show(vip); after != before {
		t.Errorf("the foreign service changed:\nbefore %s\nafter  %s", before, after)
	}
	if out := c.must("lb", "list", "-q"); out != "" {
		t.Errorf("a record was left: %q", out)
	}

	// restore repairs a target of circuit's own service whose weight or
	// forwarding someone changed.
	c.lbService("mine", "--backend", "ipvs", mine)
	c.lbMust("service mine updated\n", "lb", "add", "mine", "--weight", "2", "10.220.59.11:80")
	ipvsadm(t, "-e", "-t", mine, "-r", "10.220.59.11:80", "-m", "-w", "9")
	if out := c.must("restore"); !strings.Contains(out, "repaired the targets of service mine") {
		t.Errorf("restore after a weight changed behind circuit's back printed:\n%s", out)
	}
	if l := show(mine); !strings.Contains(l, "10.220.59.11:80 Masq 2") {
		t.Errorf("the weight restore put back: %q, want 2", l)
	}
	// circuit's own service, changed behind its back, is left to its new owner.
	ipvsadm(t, "-E", "-t", mine, "-s", "wlc")
	t.Cleanup(func() { exec.Command("ipvsadm", "-D", "-t", mine).Run() })
	_, stderr, err = c.run("", "lb", "add", "mine", "10.220.59.10:80")
	secOneLine(t, "lb add to a service someone else changed", err, stderr, "not circuit's")
	c.run("", "lb", "delete", "mine")
	if !strings.Contains(ipvsadm(t, "-Ln"), mine) {
		t.Errorf("lb delete deleted an IPVS service that is no longer circuit's")
	}
	if after := show(vip); after != before {
		t.Errorf("the foreign service changed:\nbefore %s\nafter  %s", before, after)
	}
}
