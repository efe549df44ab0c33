package lb

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/lb/internal/lbtest"
)

func TestCheck(t *testing.T) {
	ok := Service{Name: "web", Address: "10.0.0.1:80", Targets: []Target{
		{Address: "10.0.1.1:8080"}, {Address: "10.0.1.2:80", Weight: 3, Forward: "dr"}, {Address: "[fd00::1]:80", Forward: "tunnel"},
	}}
	if err := Check(ok); err != nil {
		t.Fatalf("Check: %v", err)
	}
	bad := map[string]func(*Service){
		"name":             func(s *Service) { s.Name = "a b" },
		"address":          func(s *Service) { s.Address = "web:80" },
		"protocol":         func(s *Service) { s.Protocol = "icmp" },
		"scheduler":        func(s *Service) { s.Scheduler = "random" },
		"persistence":      func(s *Service) { lbtest.SetPersistence(&s.Persistence, -time.Second) },
		"sub-second":       func(s *Service) { lbtest.SetPersistence(&s.Persistence, time.Millisecond) },
		"weight":           func(s *Service) { s.Targets[0].Weight = 70000 },
		"negative weight":  func(s *Service) { s.Targets[0].Weight = -1 },
		"forward":          func(s *Service) { s.Targets[0].Forward = "masq" },
		"duplicate":        func(s *Service) { s.Targets[1].Address = s.Targets[0].Address },
		"dr changes port":  func(s *Service) { s.Targets[1].Address = "10.0.1.2:81" },
		"mixed family nat": func(s *Service) { s.Targets[2].Forward = "nat" },
		"target address":   func(s *Service) { s.Targets[0].Address = "10.0.1.1" },
	}
	for name, mutate := range bad {
		s := ok
		s.Targets = append([]Target(nil), ok.Targets...)
		mutate(&s)
		if err := Check(s); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("%s: Check = %v, want ErrInvalid", name, err)
		} else if !strings.HasPrefix(err.Error(), "lb") {
			t.Errorf("%s: error %q lacks the lb context", name, err)
		}
	}
}

func FuzzCheck(f *testing.F) {
	f.Add("web", "10.0.0.1:80", "tcp", "rr", int64(0), "10.0.1.1:80", 1, "nat")
	f.Add("x", "[fd00::1]:443", "sctp", "mh", int64(time.Minute), "[fd00::2]:443", 0, "dr")
	f.Fuzz(func(t *testing.T, name, addr, proto, sched string, persist int64, target string, weight int, fwd string) {
		svc := Service{Name: name, Address: addr, Protocol: proto, Scheduler: sched,
			Targets: []Target{{Address: target, Weight: weight, Forward: fwd}}}
		lbtest.SetPersistence(&svc.Persistence, time.Duration(persist))
		if err := Check(svc); err != nil && !errors.Is(err, api.ErrInvalid) {
			t.Fatalf("Check error %v does not wrap ErrInvalid", err)
		}
	})
}
