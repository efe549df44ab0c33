package cni

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A plugin that records its commands and answers every one with success:
// what matters here is whether libcni calls it at all.
const recordingPlugin = `#!/bin/sh
echo "$CNI_COMMAND" >> "$(dirname "$0")/calls"
cat >/dev/null
case "$CNI_COMMAND" in
VERSION) echo '{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}' ;;
esac
exit 0
`

// TestDelPastUnreadableCache: a cached result that cannot be read (a crash
// while libcni wrote it, a full disk) must not make DEL fail for ever:
// disconnect and gc would never give the plugins' work back. libcni's
// DelNetworkList drops such an entry and DELs without it (its DelNetwork
// did not until 1.3.1); go.mod pins libcni below 1.3.1 (see there), so this
// holds that pin to the behaviour circuit needs.
func TestDelPastUnreadableCache(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "recorder"), []byte(recordingPlugin), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse([]byte(`{"cniVersion":"1.0.0","name":"cachetest","plugins":[{"type":"recorder"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(dir, "cache")
	entry := filepath.Join(cache, "results", "cachetest-ctr1-eth0")
	if err := os.MkdirAll(filepath.Dir(entry), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(entry, []byte(`{"kind":"cniCacheV1","result":{"cniVersion":"1.0.0","ips":[{"address":`), 0o600); err != nil {
		t.Fatal(err)
	}
	r := NewRuntime([]string{dir}, cache)
	a := RuntimeConf{ContainerID: "ctr1", IfName: "eth0"}
	for name, del := range map[string]func() error{
		"Del":     func() error { return r.Del(context.Background(), cfg, a) },
		"DelEach": func() error { return r.DelEach(context.Background(), cfg, a) },
	} {
		_ = os.WriteFile(entry, []byte(`{"kind":"cniCacheV1","result":{`), 0o600)
		_ = os.Remove(filepath.Join(dir, "calls"))
		if err := del(); err != nil {
			t.Fatalf("%s with an unreadable cached result: %v", name, err)
		}
		calls, _ := os.ReadFile(filepath.Join(dir, "calls"))
		if !strings.Contains(string(calls), "DEL") {
			t.Errorf("%s: the plugin got no DEL (calls: %q)", name, calls)
		}
		if _, err := os.Stat(entry); err == nil {
			t.Errorf("%s: the unreadable cache entry is still there", name)
		}
	}
}
