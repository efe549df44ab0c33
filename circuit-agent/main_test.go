package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// A bad command line is one line on stderr and exit status 2, and never
// shows a password it was given.
func TestUsageErrors(t *testing.T) {
	state := t.TempDir()
	for _, args := range [][]string{
		{"--bogus"},
		{},
		{"--store", "10.0.0.1:2379"},
		{"--store", "etcd://alice:s3cret@10.0.0.1"},
		{"--store", "etcd://127.0.0.1:2379", "--node", "no_underscores"},
		{"--store", "etcd://127.0.0.1:2379", "--lease-ttl", "soon"},
		{"--store", "etcd://127.0.0.1:2379", "--request-timeout", "5s", "--state", state, "--advertise-addr", "127.0.0.1"},
		{"--store", "etcd://127.0.0.1:2379", "--store-cacert", "/nonexistent"},
		{"--store", "https://127.0.0.1:2379", "--store-cert", "/nonexistent"},
		{"--store", "etcd://127.0.0.1:2379", "extra"},
		{"--store", "etcd://127.0.0.1:2379", "--metrics-addr", "9464"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), append([]string{"circuit-agent"}, args...), &stdout, &stderr)
		out := stderr.String()
		if code != 2 || strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, "circuit-agent: ") || strings.Contains(out, "s3cret") {
			t.Errorf("%q: exit %d, stderr %q", args, code, out)
		}
	}
}

func TestVersion(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"circuit-agent", "--version"}, &stdout, &stderr); code != 0 || !strings.HasPrefix(stdout.String(), "circuit-agent dev") {
		t.Errorf("exit %d, %q %q", code, stdout.String(), stderr.String())
	}
}
