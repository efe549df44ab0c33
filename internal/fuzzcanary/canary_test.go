//go:build fuzzcanary

package fuzzcanary

import (
	"strings"
	"testing"
)

// parsePairs reads "k=v;k=v" and is wrong on purpose: a pair that ends in
// "=" makes it index past the end of its value.
func parsePairs(s string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ";") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		_ = v[0] // the bug: v may be empty
		out[k] = v
	}
	return out
}

func FuzzBrokenParse(f *testing.F) {
	f.Add("a=1;b=2")
	f.Fuzz(func(t *testing.T, s string) {
		parsePairs(s)
	})
}
