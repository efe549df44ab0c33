package qos

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/api"
)

func TestNormalize(t *testing.T) {
	got, err := normalize(Policy{Rate: 5e6})
	if err != nil || got.Ceiling != 5e6 {
		t.Errorf("ceiling defaults to rate: %+v, %v", got, err)
	}
	got, err = normalize(Policy{Ceiling: 6e6})
	if err != nil || got.Rate != 6e6 {
		t.Errorf("a lone ceiling is the rate: %+v, %v", got, err)
	}
	bad := map[string]Policy{
		"direction":                         {Rate: 1e6, Direction: "up"},
		"ceiling 5mbit is below rate 6mbit": {Rate: 6e6, Ceiling: 5e6},
		"rate 1bit is below 8bit":           {Rate: 1},
		"delay must be between":             {Delay: time.Hour},
		"jitter must be between":            {Delay: time.Second, Jitter: -time.Second},
		"jitter needs a delay":              {Jitter: time.Millisecond},
		"loss must be between":              {Loss: 101},
		"loss must be between 0%":           {Loss: math.NaN()},
	}
	for want, p := range bad {
		_, err := normalize(p)
		if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("normalize(%+v) = %v, want ErrInvalid containing %q", p, err, want)
		}
	}
}

func TestIFBName(t *testing.T) {
	if got := ifbName("eth0"); got != "cifb-eth0" {
		t.Errorf("ifbName(eth0) = %q", got)
	}
	if got := ifbName("0123456789"); got != "cifb-0123456789" {
		t.Errorf("ifbName of a 10-char name = %q", got)
	}
	a, b := ifbName("a-very-long-if0"), ifbName("a-very-long-if1")
	if len(a) != 15 || len(b) != 15 || a == b || !strings.HasPrefix(a, "cifb-") || a != ifbName("a-very-long-if0") {
		t.Errorf("long names: %q, %q", a, b)
	}
}

func TestBurst(t *testing.T) {
	if got := burstBytes(5e6/8, 1500); got != 1564 {
		t.Errorf("5mbit burst %d, want one frame (1564)", got)
	}
	if got := burstBytes(1e9/8, 1500); got != 125000 {
		t.Errorf("1gbit burst %d, want 1ms worth (125000)", got)
	}
	if got := burstBytes(1e6/8, 9000); got != 9064 {
		t.Errorf("jumbo burst %d, want 9064", got)
	}
	if got := htbBytes(1 << 35); uint32(got) == 0 {
		t.Errorf("htbBytes(2^35 bit) = %d has a zero low word", got)
	}
	if got := ticks(1, 1); got == 0 {
		t.Error("ticks never 0")
	}
}
