package main

import (
	"math"
	"testing"
)

// The report's medians, p90s and paired ratios are what readers compare;
// they must be the usual definitions.
func TestQuantiles(t *testing.T) {
	odd := sample{5, 1, 4, 2, 3}
	even := sample{4, 1, 3, 2}
	tens := sample{10, 9, 8, 7, 6, 5, 4, 3, 2, 1}
	for _, c := range []struct {
		name string
		got  float64
		want float64
	}{
		{"median of an odd count", odd.median(), 3},
		{"median of an even count", even.median(), 2.5},
		{"p90 of 1..10 (nearest rank)", tens.p90(), 9},
		{"p99 of 1..10", tens.p99(), 10},
		{"minimum", tens.quantile(0), 1},
		{"maximum", tens.quantile(1), 10},
		{"median of ratios, not ratio of medians", paired(sample{10, 30, 100}, sample{5, 10, 100}, ratio).median(), 2},
		{"paired differences", paired(sample{12, 20}, sample{10, 15}, minus).median(), 3.5},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if v := (sample{}).median(); !math.IsNaN(v) {
		t.Errorf("median of nothing = %v, want NaN (reported as -)", v)
	}
}
