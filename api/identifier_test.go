package api

import (
	"regexp"
	"strings"
	"testing"
)

// The rules Valid replaced, as regular expressions: both must agree.
func TestIdentifierMatchesTheRegexpsItReplaced(t *testing.T) {
	rules := []struct {
		re         string
		max        int
		alnumFirst bool
		extra      string
	}{
		{`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`, 63, true, "_.-"},
		{`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`, 128, true, "_.-"},
		{`^[A-Za-z0-9_.-]{1,63}$`, 63, false, "_.-"},
		{`^[A-Za-z0-9][A-Za-z0-9_+.-]*$`, 0, true, "_+.-"},
		{`^[A-Za-z0-9_+.-]+$`, 0, false, "_+.-"},
	}
	inputs := []string{"", "a", "A9", "_a", "a_", ".", "..", "-x", "+x", "x+y", "web-00", "net.1",
		"a b", "a/b", "a:b", "é", "a\x00", "a\n", strings.Repeat("a", 63), strings.Repeat("a", 64),
		strings.Repeat("b", 128), strings.Repeat("b", 129), strings.Repeat("c", 2000)}
	for _, r := range rules {
		re := regexp.MustCompile(r.re)
		for _, in := range inputs {
			if got, want := identifier(in, r.max, r.alnumFirst, r.extra), re.MatchString(in); got != want {
				t.Errorf("identifier(%q) under %s = %v, the regexp says %v", in, r.re, got, want)
			}
		}
	}
}

func FuzzIdentifier(f *testing.F) {
	re := regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)
	f.Add("web-00")
	f.Add("-x")
	f.Fuzz(func(t *testing.T, s string) {
		if identifier(s, 63, true, "_.-") != re.MatchString(s) {
			t.Fatalf("identifier(%q) disagrees with %s", s, re)
		}
	})
}
