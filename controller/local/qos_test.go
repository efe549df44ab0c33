package local

import (
	"testing"
	"time"

	"github.com/circuit-cni/circuit/controller"
)

func TestMergePolicy(t *testing.T) {
	rate := &controller.QoSPolicy{Rate: 5e6, Ceiling: 6e6}
	cases := []struct {
		name string
		old  *controller.QoSPolicy
		upd  controller.QoSPolicy
		want controller.QoSPolicy
	}{
		{"first set", nil, controller.QoSPolicy{Rate: 5e6}, controller.QoSPolicy{Rate: 5e6}},
		{"delay keeps the rate", rate, controller.QoSPolicy{Delay: 50 * time.Millisecond},
			controller.QoSPolicy{Rate: 5e6, Ceiling: 6e6, Delay: 50 * time.Millisecond}},
		{"new rate drops the old ceiling", rate, controller.QoSPolicy{Rate: 10e6}, controller.QoSPolicy{Rate: 10e6}},
		{"loss replaces delay", &controller.QoSPolicy{Rate: 1e6, Delay: time.Second, Jitter: time.Millisecond},
			controller.QoSPolicy{Loss: 20}, controller.QoSPolicy{Rate: 1e6, Loss: 20}},
		{"direction alone", rate, controller.QoSPolicy{Rate: 5e6, Ceiling: 6e6, Direction: "ingress"},
			controller.QoSPolicy{Rate: 5e6, Ceiling: 6e6, Direction: "ingress"}},
		{"direction kept", &controller.QoSPolicy{Rate: 1e6, Direction: "both"}, controller.QoSPolicy{Rate: 2e6},
			controller.QoSPolicy{Rate: 2e6, Direction: "both"}},
	}
	for _, tc := range cases {
		if got := mergePolicy(tc.old, tc.upd); got != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestEffectivePolicy(t *testing.T) {
	netPol := &controller.QoSPolicy{Rate: 5e6}
	own := &controller.QoSPolicy{Rate: 1e6}
	n := &controller.Network{QoS: netPol}
	if p, src := effective(n, &controller.Peer{}); p != netPol || src != "network" {
		t.Errorf("peer without override: %v %s", p, src)
	}
	if p, src := effective(n, &controller.Peer{QoS: own}); p != own || src != "container" {
		t.Errorf("peer with override: %v %s", p, src)
	}
	if p, src := effective(&controller.Network{}, &controller.Peer{}); p != nil || src != "none" {
		t.Errorf("no policy: %v %s", p, src)
	}
}

func TestValidPolicy(t *testing.T) {
	for _, p := range []controller.QoSPolicy{
		{},
		{Ceiling: 1e6},
		{Rate: 2e6, Ceiling: 1e6},
		{Rate: 1e6, Direction: "sideways"},
		{Jitter: time.Millisecond},
		{Loss: 101},
	} {
		if err := validPolicy(p); err == nil {
			t.Errorf("validPolicy(%+v) accepted it", p)
		}
	}
	if err := validPolicy(controller.QoSPolicy{Rate: 1e6, Delay: time.Millisecond, Direction: "both"}); err != nil {
		t.Error(err)
	}
}
