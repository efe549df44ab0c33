package lb

import (
	"errors"
	"strings"
	"testing"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/lb/internal/lbtest"
)

func TestOpen(t *testing.T) {
	if _, err := Open("lvs", ""); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("Open(lvs) = %v, want ErrInvalid", err)
	}
	for _, name := range []string{IPVS, Nftables} {
		if _, err := Open(name, "/nonexistent/netns"); err == nil {
			t.Errorf("Open(%s) with a missing netns succeeded", name)
		}
		b, err := Open(name, "")
		if err != nil {
			t.Fatalf("Open(%s): %v", name, err)
		}
		if b.Name() != name {
			t.Errorf("Open(%s).Name() = %s", name, b.Name())
		}
		if err := b.Available(); err != nil && !errors.Is(err, api.ErrUnsupported) {
			t.Errorf("%s: Available() = %v, want nil or ErrUnsupported", name, err)
		}
		if err := b.Close(); err != nil {
			t.Errorf("%s: Close: %v", name, err)
		}
	}
}

// Auto prefers IPVS and falls back to nftables.
// With no backend, Auto says why in one line (the CLI prints errors as one
// line on stderr).
func TestAutoNoBackendOneLine(t *testing.T) {
	_, err := Auto("/nonexistent/netns")
	if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "no load-balancing backend") {
		t.Errorf("Auto in a netns that does not exist: %q, want one line", err)
	}
}

func TestAuto(t *testing.T) {
	lbtest.Root(t)
	ns := lbtest.NewNS(t, "auto")
	// Every kernel circuit runs on has nf_tables (kernel.md): no backend
	// at all is a failure, not a reason to skip.
	b, err := Auto(ns.Path)
	if err != nil {
		t.Fatalf("Auto found no backend: %v", err)
	}
	defer b.Close()
	ipvs, err := Open(IPVS, ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer ipvs.Close()
	want := Nftables
	if ipvs.Available() == nil {
		want = IPVS
	}
	if b.Name() != want {
		t.Errorf("Auto chose %s, want %s", b.Name(), want)
	}
	t.Logf("Auto chose %s", b.Name())
}
