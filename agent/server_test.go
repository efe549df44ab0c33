package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/agentapi"
	"github.com/circuit-cni/circuit/api"
)

// The socket is root's alone (0600); a stale one left by a crashed agent
// is replaced, a live agent's is not; it goes when the agent stops.
func TestSocket(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	state := t.TempDir()
	path := filepath.Join(state, agentapi.SocketName)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // what a crash leaves: a socket file no one answers on

	prefix := newPrefix()
	a := startAgent(t, prefix, "a", state)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %s, want a socket with 0600", fi.Mode())
	}
	if !a.logged("removed stale socket") {
		t.Errorf("no word of the stale socket")
	}

	second := newAgent(t, prefix, "a2", state)
	if err := second.Run(context.Background()); !errors.Is(err, api.ErrInUse) {
		t.Errorf("a second agent on the same state dir: %v, want ErrInUse", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("the second agent removed the first's socket: %v", err)
	}

	// An unknown path answers not found, in the API's error shape.
	if err := a.api.Do(context.Background(), "GET", "/v1/nope", nil, nil); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("GET /v1/nope: %v", err)
	}
	code, body := post(t, state, agentapi.PathNotify, `{"network":`)
	if code != 400 || !strings.Contains(body, `"kind":"invalid"`) {
		t.Errorf("a broken body: %d %s", code, body)
	}

	a.stop()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after stop: %v", err)
	}
}

// Credentials, a URL's user:password or a key file's contents, appear in
// no log and no error, whether etcd answers or not.
func TestCredentialsNeverShown(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	const secret = "s3cr3t-Pa55"
	st, err := ParseStore("etcd://alice:" + secret + "@127.0.0.1:1,127.0.0.1:2")
	if err != nil {
		t.Fatal(err)
	}
	if st.Username != "alice" || st.Password != secret || strings.Join(st.Endpoints, ",") != "http://127.0.0.1:1,http://127.0.0.1:2" {
		t.Fatalf("parsed %+v", st)
	}
	for _, bad := range []string{
		"etcd://alice:" + secret + "@127.0.0.1",
		"ftp://alice:" + secret + "@127.0.0.1:1",
		"etcd://alice:" + secret + "@127.0.0.1:1,bob:" + secret + "x@h:2",
		"etcd://alice:" + secret + "@h:99999",
	} {
		_, err := ParseStore(bad)
		if err == nil || strings.Contains(err.Error(), secret) {
			t.Errorf("ParseStore(%q): %v", RedactStore(bad), err)
		}
	}

	// An agent whose etcd does not answer, with credentials.
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := closed.Addr().String()
	closed.Close()
	a := newAgent(t, newPrefix(), "a", "", func(c *Config) {
		c.Endpoints, c.Username, c.Password = []string{"http://" + addr}, "alice", secret
	})
	a.start()
	waitFor(t, "a retry", func() bool { return a.logged("retrying") })
	_, err = a.createNetwork(conf("n", "10.1.0.0/16"), false)
	if !errors.Is(err, api.ErrUnavailable) || strings.Contains(err.Error(), secret) {
		t.Errorf("create without etcd: %v", err)
	}
	// And one whose etcd answers (without auth enabled, it lets the
	// client in).
	b := startAgent(t, newPrefix(), "b", "", func(c *Config) { c.Username, c.Password = "alice", secret })
	b.mustCreate(conf("n", "10.1.0.0/16"))
	a.stop()
	b.stop()
	for _, ta := range []*testAgent{a, b} {
		if strings.Contains(ta.logs.String(), secret) {
			t.Errorf("%s's log shows the password:\n%s", ta.cfg.Node, ta.logs)
		}
	}

	// A key file's contents.
	dir := t.TempDir()
	keyText := "-----BEGIN PRIVATE KEY-----\nS3CRETKEYMATERIAL0123456789\n-----END PRIVATE KEY-----\n"
	cert, key := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	os.WriteFile(cert, []byte(keyText), 0o600)
	os.WriteFile(key, []byte(keyText), 0o600)
	for _, files := range [][3]string{{"", cert, key}, {key, "", ""}, {"", cert, ""}} {
		_, err := LoadTLS(files[0], files[1], files[2])
		if err == nil || strings.Contains(err.Error(), "S3CRETKEYMATERIAL") {
			t.Errorf("LoadTLS%q: %v", files, err)
		}
	}
}

func TestParseStore(t *testing.T) {
	needEtcd(t)
	for in, want := range map[string]string{
		"etcd://10.0.0.1:2379":           "http://10.0.0.1:2379",
		"etcd://a:2379,b:2379":           "http://a:2379,http://b:2379",
		"https://a:2379,https://b:2379/": "https://a:2379,https://b:2379",
		"http://[fd00::1]:2379":          "http://[fd00::1]:2379",
		"etcd://u:p@a:1,b:2":             "http://a:1,http://b:2",
	} {
		st, err := ParseStore(in)
		if err != nil || strings.Join(st.Endpoints, ",") != want {
			t.Errorf("ParseStore(%q) = %v, %v; want %s", in, st.Endpoints, err, want)
		}
	}
	for _, in := range []string{"", "10.0.0.1:2379", "etcd://", "etcd://a", "etcd://a:b", "https://a:1,etcd://b:2", "etcd://a:1/path", "etcd://:p@a:1"} {
		if _, err := ParseStore(in); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("ParseStore(%q): %v, want ErrInvalid", in, err)
		}
	}
	if got := RedactStore("https://u:p@a:1,u:p@b:2"); got != "https://***@a:1,***@b:2" {
		t.Errorf("RedactStore: %s", got)
	}
}

func TestConfigBounds(t *testing.T) {
	needEtcd(t)
	ok := Config{Endpoints: []string{"http://127.0.0.1:1"}, Node: "n", StateDir: "/tmp/x", AdvertiseAddr: "10.0.0.1"}
	for name, f := range map[string]func(*Config){
		"request timeout at circuit's": func(c *Config) { c.RequestTimeout = agentapi.DefaultTimeout },
		"lease under a second":         func(c *Config) { c.LeaseTTL = 500e6 },
		"bad node":                     func(c *Config) { c.Node = "no_way" },
		"bad address":                  func(c *Config) { c.AdvertiseAddr = "host" },
		"relative prefix":              func(c *Config) { c.Prefix = "circuit" },
		"no endpoints":                 func(c *Config) { c.Endpoints = nil },
	} {
		c := ok
		f(&c)
		if err := c.check(); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	c := ok
	if err := c.check(); err != nil || c.LeaseTTL != DefaultLeaseTTL || c.RequestTimeout != DefaultRequestTimeout || c.Prefix != DefaultPrefix {
		t.Errorf("defaults: %+v, %v", c, err)
	}
}

func TestAdvertiseAddr(t *testing.T) {
	needEtcd(t)
	addr, err := AdvertiseAddr(context.Background(), "http://127.0.0.1:2379")
	if err != nil {
		t.Skipf("no netlink route lookup here: %v", err)
	}
	if addr != "127.0.0.1" {
		t.Errorf("source of the route to 127.0.0.1: %s", addr)
	}
}

// post sends body as is to the agent of state; it returns the status and
// the answer.
func post(t *testing.T, state, path, body string) (int, string) {
	t.Helper()
	c := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", filepath.Join(state, agentapi.SocketName))
	}}}
	resp, err := c.Post("http://agent"+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestLoadTLS(t *testing.T) {
	needEtcd(t)
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "circuit-agent"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	cfg, err := LoadTLS(cert, cert, keyFile)
	if err != nil || cfg.RootCAs == nil || len(cfg.Certificates) != 1 || cfg.MinVersion != tls.VersionTLS12 {
		t.Errorf("LoadTLS: %+v, %v", cfg, err)
	}
	if _, err := LoadTLS(filepath.Join(dir, "none"), "", ""); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("a missing CA file: %v", err)
	}
}
