package api

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestDurationsReadAsTyped(t *testing.T) {
	p := QoSPolicy{Rate: 5000000, Delay: 50 * time.Millisecond, Jitter: 5 * time.Millisecond}
	b, _ := json.Marshal(p)
	if !strings.Contains(string(b), `"delay":"50ms"`) || !strings.Contains(string(b), `"jitter":"5ms"`) {
		t.Fatalf("policy JSON = %s", b)
	}
	var back QoSPolicy
	if err := json.Unmarshal(b, &back); err != nil || back != p {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
	svc := ServiceStatus{Service: Service{Name: "demo", Persistence: time.Minute}, Stats: Counters{Packets: 3}}
	b, _ = json.Marshal(svc)
	for _, want := range []string{`"persistence":"1m0s"`, `"name":"demo"`, `"stats":{"connections":0,"packets":3`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("service JSON %s lacks %s", b, want)
		}
	}
	var s Service
	// Numbers of nanoseconds, as an older record may hold, still read.
	if err := json.Unmarshal([]byte(`{"name":"x","persistence":60000000000}`), &s); err != nil || s.Persistence != time.Minute {
		t.Fatalf("numeric persistence: %+v, %v", s, err)
	}
}
