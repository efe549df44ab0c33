package cni

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/circuit-cni/circuit/api"
)

const seedConf = `{
    "cniVersion": "0.2.0",
    "name": "br-sandbox",
    "type": "bridge",
    "bridge": "cni0",
    "ipMasq": true,
    "isGateway": true,
    "ipam": {"type": "host-local", "subnet": "10.100.10.0/24", "routes": [{"dst": "0.0.0.0/0"}]}
}`

const chainConf = `{"cniVersion": "1.1.0", "name": "chain", "plugins": [
  {"type": "bridge", "bridge": "cni1", "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "firewall"},
  {"type": "tuning"}]}`

func TestParseValid(t *testing.T) {
	c, err := Parse([]byte(seedConf))
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "br-sandbox" || c.CNIVersion != "0.2.0" || c.IsList || len(c.Plugins) != 1 || c.Plugins[0] != "bridge" || len(c.List.Plugins) != 1 {
		t.Fatalf("seed conf parsed as %+v", c)
	}
	c, err = Parse([]byte(chainConf))
	if err != nil {
		t.Fatal(err)
	}
	if !c.IsList || strings.Join(c.Plugins, "+") != "bridge+portmap+firewall+tuning" || len(c.List.Plugins) != 4 {
		t.Fatalf("chain parsed as %+v", c)
	}
	for _, v := range SupportedVersions {
		conf := fmt.Sprintf(`{"cniVersion": %q, "name": "n", "type": "ptp"}`, v)
		if _, err := Parse([]byte(conf)); err != nil {
			t.Errorf("cniVersion %s: %v", v, err)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	cases := map[string]string{
		"not json":           `{"name": "x"`,
		"trailing data":      `{"cniVersion": "0.4.0", "name": "x", "type": "bridge"} {}`,
		"array":              `[1, 2]`,
		"no name":            `{"cniVersion": "0.4.0", "type": "bridge"}`,
		"empty name":         `{"cniVersion": "0.4.0", "name": "", "type": "bridge"}`,
		"path name":          `{"cniVersion": "0.4.0", "name": "../etc", "type": "bridge"}`,
		"slash name":         `{"cniVersion": "0.4.0", "name": "a/b", "type": "bridge"}`,
		"dotdot name":        `{"cniVersion": "0.4.0", "name": "..", "type": "bridge"}`,
		"long name":          `{"cniVersion": "0.4.0", "name": "` + strings.Repeat("a", 64) + `", "type": "bridge"}`,
		"no type":            `{"cniVersion": "0.4.0", "name": "x"}`,
		"path type":          `{"cniVersion": "0.4.0", "name": "x", "type": "../../bin/sh"}`,
		"absolute type":      `{"cniVersion": "0.4.0", "name": "x", "type": "/bin/sh"}`,
		"no version":         `{"name": "x", "type": "bridge"}`,
		"future version":     `{"cniVersion": "9.9.9", "name": "x", "type": "bridge"}`,
		"empty chain":        `{"cniVersion": "1.0.0", "name": "x", "plugins": []}`,
		"chain without type": `{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "bridge"}, {}]}`,
		"chain path type":    `{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "a/b"}]}`,
	}
	for name, conf := range cases {
		if _, err := Parse([]byte(conf)); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
	if _, err := Parse(make([]byte, MaxConfigSize+1)); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("oversized: %v", err)
	}
}

// FuzzParse: whatever the bytes, Parse either refuses them with ErrInvalid
// or returns a config whose name and plugin types are safe as paths.
func FuzzParse(f *testing.F) {
	f.Add([]byte(seedConf))
	f.Add([]byte(chainConf))
	f.Add([]byte(`{"cniVersion":"0.4.0","name":"../x","type":"bridge"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err != nil {
			if !errors.Is(err, api.ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		for _, s := range append([]string{c.Name}, c.Plugins...) {
			if s == "" || strings.ContainsAny(s, "/\x00") || s == "." || s == ".." {
				t.Fatalf("unsafe name %q accepted", s)
			}
		}
		if c.List == nil || len(c.List.Plugins) != len(c.Plugins) {
			t.Fatalf("config %+v has no matching plugin list", c)
		}
	})
}
