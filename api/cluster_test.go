package api

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestBlocks(t *testing.T) {
	for _, tc := range []struct {
		r     string
		bits  int
		first string
		last  string
		n     int
	}{
		{"10.1.0.0/16", 24, "10.1.0.0/24", "10.1.255.0/24", 256},
		{"10.1.0.0/24", 24, "10.1.0.0/24", "10.1.0.0/24", 1},
		{"10.1.0.0/23", 25, "10.1.0.0/25", "10.1.1.128/25", 4},
		{"fd00:1::/112", 120, "fd00:1::/120", "fd00:1::ff00/120", 256},
		{"255.255.254.0/23", 24, "255.255.254.0/24", "255.255.255.0/24", 2},
	} {
		bl, err := Blocks(netip.MustParsePrefix(tc.r), tc.bits)
		if err != nil || len(bl) != tc.n || bl[0].String() != tc.first || bl[len(bl)-1].String() != tc.last {
			t.Errorf("Blocks(%s, %d) = %d blocks %v..%v, %v; want %d %s..%s", tc.r, tc.bits, len(bl), bl[0], bl[len(bl)-1], err, tc.n, tc.first, tc.last)
		}
	}
	if _, err := Blocks(netip.MustParsePrefix("10.0.0.0/8"), 30); err == nil {
		t.Error("2^22 blocks enumerated")
	}
}

func TestValidCluster(t *testing.T) {
	c := Cluster{Overlay: "vxlan"}
	if err := ValidCluster(&c, []string{"10.1.0.0/16", "fd00:1::/112"}); err != nil || c.BlockSize != 24 || c.BlockSize6 != 120 {
		t.Errorf("defaults: %+v, %v", c, err)
	}
	for _, tc := range []struct {
		c      Cluster
		ranges []string
		want   string
	}{
		{Cluster{Overlay: "gre"}, []string{"10.1.0.0/16"}, "overlay"},
		{Cluster{Overlay: "vxlan", BlockSize: 16}, []string{"10.1.0.0/24"}, "do not fit"},
		{Cluster{Overlay: "vxlan", BlockSize: 31}, []string{"10.1.0.0/16"}, "8 to 30"},
		{Cluster{Overlay: "vxlan"}, nil, "host-local"},
	} {
		err := ValidCluster(&tc.c, tc.ranges)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ValidCluster(%+v, %v) = %v, want %q", tc.c, tc.ranges, err, tc.want)
		}
	}
}

func TestValidNodeName(t *testing.T) {
	for _, ok := range []string{"node-a", "a", "host1.example.com", "N0"} {
		if err := ValidNodeName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", "a..b", "a/b", "a b", "a.", strings.Repeat("a", 64), "é"} {
		if err := ValidNodeName(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("%q accepted", bad)
		}
	}
}
