package api

import (
	"fmt"
	"math"
	"math/big"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// MinRate is one byte per second, the smallest rate HTB can shape: a rate
// or ceiling below it is refused by qos set and by the shaper alike.
const MinRate = 8

// MaxDelay bounds delay and jitter: netem takes them as 32-bit kernel ticks,
// which overflow a little past a minute.
const MaxDelay = 60 * time.Second

const maxDelayText = "60s"

// invalid is a one-line, user-facing refusal of one value.
func invalid(what, input, reason string) error {
	return Errorf(ErrInvalid, "invalid %s %s: %s", what, quote(input), reason)
}

// rateUnits maps a unit to bits per second; the byte units follow tc.
var rateUnits = map[string]int64{
	"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
	"bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9, "tbps": 8e12,
}

const rateHint = "use kbit, mbit, gbit or a plain number of kbit/s"

// ParseRate parses a rate as tc writes it and returns bits per second.
// A plain number is kbit/s; units are case-insensitive and decimal.
func ParseRate(s string) (uint64, error) {
	in := strings.TrimSpace(s)
	if in == "" {
		return 0, invalid("rate", s, "empty ("+rateHint+")")
	}
	num, unit := splitNumber(strings.ToLower(in))
	if strings.HasPrefix(in, "-") {
		return 0, invalid("rate", s, "must be positive")
	}
	if num == "" {
		return 0, invalid("rate", s, "no number ("+rateHint+")")
	}
	mult := int64(1000) // a plain number is kbit/s, as in the CNI bandwidth plugin and tc
	if unit != "" {
		m, ok := rateUnits[unit]
		if !ok {
			return 0, invalid("rate", s, "unknown unit "+strconv.Quote(unit)+" ("+rateHint+")")
		}
		mult = m
	}
	v, ok := decimal(num)
	if !ok {
		return 0, invalid("rate", s, "not a decimal number ("+rateHint+")")
	}
	if v.Sign() == 0 {
		return 0, invalid("rate", s, "must be positive")
	}
	v.Mul(v, new(big.Rat).SetInt64(mult))
	bits, ok := roundUint64(v)
	if !ok {
		return 0, invalid("rate", s, "too large")
	}
	if bits == 0 {
		return 0, invalid("rate", s, "below 1bit")
	}
	return bits, nil
}

// ParseDuration parses Go duration syntax ("50ms", "1.5s") or a plain
// number of milliseconds, between 0 and MaxDelay.
func ParseDuration(s string) (time.Duration, error) {
	const hint = " (use e.g. 50ms, 1.5s or a plain number of milliseconds)"
	in := strings.TrimSpace(s)
	switch {
	case in == "":
		return 0, invalid("duration", s, "empty"+hint)
	case strings.HasPrefix(in, "-"):
		return 0, invalid("duration", s, "must not be negative")
	case strings.HasPrefix(in, "+"):
		return 0, invalid("duration", s, "not a duration"+hint)
	}
	if v, ok := decimal(in); ok { // plain milliseconds
		n, ok := roundUint64(v.Mul(v, big.NewRat(int64(time.Millisecond), 1)))
		if !ok || n > uint64(MaxDelay) {
			return 0, invalid("duration", s, "longer than "+maxDelayText)
		}
		return time.Duration(n), nil
	}
	d, err := time.ParseDuration(in)
	if err != nil {
		if unit := unknownDurationUnit(in); unit != "" {
			return 0, invalid("duration", s, "unknown unit "+strconv.Quote(unit)+" (use ms, s, us or a plain number of milliseconds)")
		}
		return 0, invalid("duration", s, "not a duration"+hint)
	}
	if d > MaxDelay {
		return 0, invalid("duration", s, "longer than "+maxDelayText)
	}
	return d, nil
}

// ParsePercent parses "20%", "20" or "0.5%" into a percentage in [0,100].
func ParsePercent(s string) (float64, error) {
	in := strings.TrimSpace(s)
	num := strings.TrimSpace(strings.TrimSuffix(in, "%"))
	if num == "" {
		return 0, invalid("percentage", s, "empty (use e.g. 20% or 0.5)")
	}
	if strings.HasPrefix(num, "-") {
		return 0, invalid("percentage", s, "must not be negative")
	}
	v, ok := decimal(num)
	if !ok {
		return 0, invalid("percentage", s, "not a number (use e.g. 20% or 0.5)")
	}
	if v.Cmp(big.NewRat(100, 1)) > 0 {
		return 0, invalid("percentage", s, "above 100%")
	}
	f, _ := v.Float64()
	return f, nil
}

// unknownDurationUnit returns the first unit in s that Go durations lack.
func unknownDurationUnit(s string) string {
	for _, u := range regexpUnits.FindAllString(s, -1) {
		switch u {
		case "ns", "us", "µs", "μs", "ms", "s", "m", "h":
		default:
			return u
		}
	}
	return ""
}

var regexpUnits = regexp.MustCompile(`[^0-9.+-]+`)

// splitNumber splits "1.5mbit" into "1.5" and "mbit".
func splitNumber(s string) (num, unit string) {
	i := 0
	for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.') {
		i++
	}
	return s[:i], strings.TrimSpace(s[i:])
}

// decimal parses digits with at most one decimal point, exactly. It
// rejects what big.Rat or strconv would also take: signs, exponents, hex,
// fractions, NaN and Inf.
func decimal(s string) (*big.Rat, bool) {
	digits, dots := 0, 0
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] >= '0' && s[i] <= '9':
			digits++
		case s[i] == '.':
			dots++
		default:
			return nil, false
		}
	}
	if digits == 0 || dots > 1 {
		return nil, false
	}
	if strings.HasPrefix(s, ".") {
		s = "0" + s
	}
	v, ok := new(big.Rat).SetString(s)
	return v, ok
}

// roundUint64 rounds a non-negative rational to the nearest integer.
func roundUint64(v *big.Rat) (uint64, bool) {
	q, r := new(big.Int).QuoRem(v.Num(), v.Denom(), new(big.Int))
	if r.Lsh(r, 1).Cmp(v.Denom()) >= 0 {
		q.Add(q, big.NewInt(1))
	}
	if !q.IsUint64() {
		return 0, false
	}
	return q.Uint64(), true
}

// formatUnits are tried largest first.
var formatUnits = []struct {
	name string
	bits uint64
}{{"tbit", 1e12}, {"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}}

// FormatRate renders bits per second for display in the largest unit that
// needs at most three decimals, e.g. "5mbit", "1.5mbit", "500kbit".
// ParseRate reads the result back to the same number.
func FormatRate(bps uint64) string {
	for _, u := range formatUnits {
		if bps < u.bits || bps%(u.bits/1000) != 0 {
			continue
		}
		whole, frac := bps/u.bits, (bps%u.bits)/(u.bits/1000)
		if frac == 0 {
			return uitoa(whole) + u.name
		}
		f := strings.TrimRight(pad3(frac), "0")
		return uitoa(whole) + "." + f + u.name
	}
	return uitoa(bps) + "bit"
}

func pad3(n uint64) string {
	s := uitoa(n)
	return strings.Repeat("0", 3-len(s)) + s
}

func uitoa(n uint64) string { return strconv.FormatUint(n, 10) }

// ValidRate checks a rate or ceiling in bits per second; 0 means unset.
func ValidRate(what string, bps uint64) error {
	if bps != 0 && bps < MinRate {
		return invalidPolicy(fmt.Sprintf("%s %dbit is below %dbit, the smallest rate the kernel can shape", what, bps, MinRate))
	}
	return nil
}

// ValidDelay checks a delay or jitter.
func ValidDelay(what string, d time.Duration) error {
	if d < 0 || d > MaxDelay {
		return invalidPolicy(fmt.Sprintf("%s must be between 0 and %s", what, maxDelayText))
	}
	return nil
}

// ValidLoss checks a loss percentage.
func ValidLoss(p float64) error {
	if math.IsNaN(p) || p < 0 || p > 100 {
		return invalidPolicy("loss must be between 0% and 100%")
	}
	return nil
}

// ValidDirection checks a direction; "" is allowed (egress, or the one set).
func ValidDirection(d Direction) error {
	switch d {
	case "", DirEgress, DirIngress, DirBoth:
		return nil
	}
	return invalidPolicy(fmt.Sprintf("direction %s: use egress, ingress or both", quote(string(d))))
}

// ValidatePolicy checks a policy as a user asks for it (qos set), before it
// is merged with the one in place: every value in range, at least one set,
// a ceiling only with a rate and not below it, jitter only with a delay.
func ValidatePolicy(p QoSPolicy) error {
	if err := ValidDirection(p.Direction); err != nil {
		return err
	}
	if p.IsZero() {
		return invalidPolicy("give at least one of rate, ceiling, delay, jitter or loss")
	}
	for _, r := range []struct {
		what string
		v    uint64
	}{{"rate", p.Rate}, {"ceiling", p.Ceiling}} {
		if err := ValidRate(r.what, r.v); err != nil {
			return err
		}
	}
	if p.Ceiling > 0 && p.Rate == 0 {
		return invalidPolicy("a ceiling needs a rate")
	}
	if p.Ceiling > 0 && p.Ceiling < p.Rate {
		return invalidPolicy(fmt.Sprintf("ceiling %s is below rate %s", FormatRate(p.Ceiling), FormatRate(p.Rate)))
	}
	if err := ValidDelay("delay", p.Delay); err != nil {
		return err
	}
	if err := ValidDelay("jitter", p.Jitter); err != nil {
		return err
	}
	if p.Jitter > 0 && p.Delay == 0 {
		return invalidPolicy("jitter needs a delay")
	}
	return ValidLoss(p.Loss)
}

// MergePolicy lays a qos set over the policy already in place at the same
// level: the rate pair (rate, ceiling) and the emulation trio (delay,
// jitter, loss) are each replaced as a whole when any of their members is
// given, and a direction given replaces the old one. So --delay 50ms after
// --rate 5000 keeps the rate, and --rate 10000 after --rate 5000 --ceiling
// 6000 drops the old ceiling.
func MergePolicy(old *QoSPolicy, upd QoSPolicy) QoSPolicy {
	if old == nil {
		return upd
	}
	out := *old
	if upd.Rate > 0 || upd.Ceiling > 0 {
		out.Rate, out.Ceiling = upd.Rate, upd.Ceiling
	}
	if upd.NeedsNetem() {
		out.Delay, out.Jitter, out.Loss = upd.Delay, upd.Jitter, upd.Loss
	}
	if upd.Direction != "" {
		out.Direction = upd.Direction
	}
	return out
}

// Effective is the policy that shapes a peer: its own, else its network's.
func Effective(network *QoSPolicy, peer *QoSPolicy) (*QoSPolicy, PolicySource) {
	switch {
	case peer != nil:
		return peer, SourceContainer
	case network != nil:
		return network, SourceNetwork
	}
	return nil, SourceNone
}

func invalidPolicy(reason string) error {
	return Errorf(ErrInvalid, "invalid qos policy: %s", reason)
}
