package api

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

func TestParseRate(t *testing.T) {
	good := map[string]uint64{
		"5000":                    5_000_000,
		"1":                       1000,
		"0.5":                     500,
		"1bit":                    1,
		"8BIT":                    8,
		"500kbit":                 500_000,
		"5mbit":                   5_000_000,
		"5Mbit":                   5_000_000,
		"1.5mbit":                 1_500_000,
		"1gbit":                   1_000_000_000,
		"2tbit":                   2_000_000_000_000,
		"1bps":                    8,
		"1kbps":                   8000,
		"1.25mbps":                10_000_000,
		"1gbps":                   8_000_000_000,
		"1tbps":                   8_000_000_000_000,
		" 10mbit ":                10_000_000,
		"10 mbit":                 10_000_000,
		".5mbit":                  500_000,
		"5.mbit":                  5_000_000,
		"1.0000001":               1000, // rounds to whole bits
		"18446744073709551615bit": math.MaxUint64,
	}
	for in, want := range good {
		got, err := ParseRate(in)
		if err != nil || got != want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	bad := map[string]string{
		"":                        "empty",
		"   ":                     "empty",
		"-5":                      "must be positive",
		"-5mbit":                  "must be positive",
		"0":                       "must be positive",
		"0mbit":                   "must be positive",
		"0.0001bit":               "below 1bit",
		"5xbit":                   `unknown unit "xbit" (use kbit, mbit, gbit or a plain number of kbit/s)`,
		"5 k":                     `unknown unit "k"`,
		"mbit":                    "no number",
		"1.2.3mbit":               "not a decimal number",
		"1e3":                     `unknown unit "e3"`,
		"+5":                      "no number",
		"0x10":                    `unknown unit "x10"`,
		"NaN":                     "no number",
		"18446744073709551616bit": "too large",
		"20000000tbit":            "too large",
	}
	for in, want := range bad {
		got, err := ParseRate(in)
		if err == nil {
			t.Errorf("ParseRate(%q) = %d, want error", in, got)
			continue
		}
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseRate(%q) error %v does not wrap ErrInvalid", in, err)
		}
		if !strings.Contains(err.Error(), want) || !strings.HasPrefix(err.Error(), "invalid rate ") {
			t.Errorf("ParseRate(%q) error %q, want it to contain %q", in, err, want)
		}
	}
	_, err := ParseRate("5xbit")
	if want := `invalid rate "5xbit": unknown unit "xbit" (use kbit, mbit, gbit or a plain number of kbit/s)`; err.Error() != want {
		t.Errorf("error text %q, want %q", err, want)
	}
}

func TestParseDuration(t *testing.T) {
	good := map[string]time.Duration{
		"0":       0,
		"50":      50 * time.Millisecond,
		"1.5":     1500 * time.Microsecond,
		"50ms":    50 * time.Millisecond,
		"1.5s":    1500 * time.Millisecond,
		"100us":   100 * time.Microsecond,
		"1m":      time.Minute,
		"60s":     time.Minute,
		"60000":   time.Minute,
		" 20ms ":  20 * time.Millisecond,
		"0s":      0,
		"1s500ms": 1500 * time.Millisecond,
	}
	for in, want := range good {
		got, err := ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	bad := map[string]string{
		"":                     "empty",
		"-5ms":                 "must not be negative",
		"-1":                   "must not be negative",
		"61s":                  "longer than 60s",
		"60001":                "longer than 60s",
		"1h":                   "longer than 60s",
		"5x":                   `unknown unit "x"`,
		"ms":                   "not a duration",
		"1e3":                  `unknown unit "e"`,
		"+5ms":                 "not a duration",
		"1..5ms":               "not a duration",
		"99999999999999999999": "longer than 60s",
	}
	for in, want := range bad {
		got, err := ParseDuration(in)
		if err == nil {
			t.Errorf("ParseDuration(%q) = %v, want error", in, got)
			continue
		}
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseDuration(%q) error %q, want ErrInvalid containing %q", in, err, want)
		}
	}
}

func TestParsePercent(t *testing.T) {
	good := map[string]float64{
		"20%": 20, "20": 20, "0.5%": 0.5, "0": 0, "100%": 100, " 5 % ": 5, ".5": 0.5,
	}
	for in, want := range good {
		got, err := ParsePercent(in)
		if err != nil || got != want {
			t.Errorf("ParsePercent(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "%", "-1%", "100.1", "101%", "NaN", "Inf", "1e1", "20%%", "x"} {
		if got, err := ParsePercent(in); err == nil || !errors.Is(err, ErrInvalid) {
			t.Errorf("ParsePercent(%q) = %v, %v; want ErrInvalid", in, got, err)
		}
	}
}

func TestFormatRate(t *testing.T) {
	cases := map[uint64]string{
		0:                 "0bit",
		1:                 "1bit",
		999:               "999bit",
		1000:              "1kbit",
		500_000:           "500kbit",
		5_000_000:         "5mbit",
		6_000_000:         "6mbit",
		1_500_000:         "1.5mbit",
		1_234_567:         "1234.567kbit",
		1_001:             "1.001kbit",
		10_000_000_000:    "10gbit",
		2_500_000_000_000: "2.5tbit",
		math.MaxUint64:    "18446744073709551.615kbit",
	}
	for in, want := range cases {
		if got := FormatRate(in); got != want {
			t.Errorf("FormatRate(%d) = %q, want %q", in, got, want)
		}
	}
}

func FuzzParseRate(f *testing.F) {
	for _, s := range []string{"5000", "1.5mbit", "5xbit", "-1", "0", "1e3", "18446744073709551616bit", "1kbps", ".5"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseRate(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseRate(%q): error %v does not wrap ErrInvalid", s, err)
			}
			return
		}
		if v == 0 {
			t.Fatalf("ParseRate(%q) = 0 without error", s)
		}
		if back, err := ParseRate(FormatRate(v)); err != nil || back != v {
			t.Fatalf("ParseRate(FormatRate(%d)) = %d, %v", v, back, err)
		}
	})
}

func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"50", "50ms", "1.5s", "-1", "61s", "1h", "5x", "0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDuration(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseDuration(%q): error %v does not wrap ErrInvalid", s, err)
			}
			return
		}
		if d < 0 || d > MaxDelay {
			t.Fatalf("ParseDuration(%q) = %v, outside [0, %v]", s, d, MaxDelay)
		}
	})
}

func FuzzParsePercent(f *testing.F) {
	for _, s := range []string{"20%", "20", "0.5%", "-1", "101", "NaN"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePercent(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParsePercent(%q): error %v does not wrap ErrInvalid", s, err)
			}
			return
		}
		if math.IsNaN(p) || p < 0 || p > 100 {
			t.Fatalf("ParsePercent(%q) = %v, outside [0,100]", s, p)
		}
	})
}

func TestMergePolicy(t *testing.T) {
	rate := &QoSPolicy{Rate: 5e6, Ceiling: 6e6}
	cases := []struct {
		name string
		old  *QoSPolicy
		upd  QoSPolicy
		want QoSPolicy
	}{
		{"first set", nil, QoSPolicy{Rate: 5e6}, QoSPolicy{Rate: 5e6}},
		{"delay keeps the rate", rate, QoSPolicy{Delay: 50 * time.Millisecond},
			QoSPolicy{Rate: 5e6, Ceiling: 6e6, Delay: 50 * time.Millisecond}},
		{"new rate drops the old ceiling", rate, QoSPolicy{Rate: 10e6}, QoSPolicy{Rate: 10e6}},
		{"loss replaces delay", &QoSPolicy{Rate: 1e6, Delay: time.Second, Jitter: time.Millisecond},
			QoSPolicy{Loss: 20}, QoSPolicy{Rate: 1e6, Loss: 20}},
		{"direction alone", rate, QoSPolicy{Rate: 5e6, Ceiling: 6e6, Direction: "ingress"},
			QoSPolicy{Rate: 5e6, Ceiling: 6e6, Direction: "ingress"}},
		{"direction kept", &QoSPolicy{Rate: 1e6, Direction: "both"}, QoSPolicy{Rate: 2e6},
			QoSPolicy{Rate: 2e6, Direction: "both"}},
	}
	for _, tc := range cases {
		if got := MergePolicy(tc.old, tc.upd); got != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestEffectivePolicy(t *testing.T) {
	netPol := &QoSPolicy{Rate: 5e6}
	own := &QoSPolicy{Rate: 1e6}
	if p, src := Effective(netPol, nil); p != netPol || src != SourceNetwork {
		t.Errorf("peer without override: %v %s", p, src)
	}
	if p, src := Effective(netPol, own); p != own || src != SourceContainer {
		t.Errorf("peer with override: %v %s", p, src)
	}
	if p, src := Effective(nil, nil); p != nil || src != SourceNone {
		t.Errorf("no policy: %v %s", p, src)
	}
}

func TestValidatePolicy(t *testing.T) {
	for _, p := range []QoSPolicy{
		{},
		{Ceiling: 1e6},
		{Rate: 2e6, Ceiling: 1e6},
		{Rate: 1e6, Direction: "sideways"},
		{Jitter: time.Millisecond},
		{Loss: 101},
		{Rate: 7},
		{Rate: 5e6, Ceiling: 7},
		{Delay: 61 * time.Second},
	} {
		if err := ValidatePolicy(p); err == nil {
			t.Errorf("ValidatePolicy(%+v) accepted it", p)
		}
	}
	if err := ValidatePolicy(QoSPolicy{Rate: 1e6, Delay: time.Millisecond, Direction: "both"}); err != nil {
		t.Error(err)
	}
}
