package lbtest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Serve answers HTTP on addr inside n with "NAME CLIENT-IP".
func (n *NS) Serve(t testing.TB, addr, name string) {
	t.Helper()
	var ln net.Listener
	err := n.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("%s: listen %s: %v", n.Name, addr, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "%s %s\n", name, host)
	})}
	srv.SetKeepAlivesEnabled(false)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// Client is an HTTP client whose connections start in n, one connection
// per request (so each request is a new connection to schedule).
func (n *NS) Client(src string) *http.Client {
	// Backstops for a lost answer, far above any answer on a loaded machine.
	d := &net.Dialer{Timeout: 10 * time.Second}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := n.Do(func() error {
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	return &http.Client{
		Timeout:   20 * time.Second,
		Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true},
	}
}

// Get fetches url and returns the answering server's name and the client
// address it saw.
func Get(c *http.Client, url string) (server, seen string, err error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", "", err
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return "", "", fmt.Errorf("unexpected answer %q", b)
	}
	return f[0], f[1], nil
}

// Tally sends n requests and counts answers per server; failures count
// under "error".
func Tally(c *http.Client, url string, n int) map[string]int {
	m := map[string]int{}
	for range n {
		s, _, err := Get(c, url)
		if err != nil {
			s = "error"
		}
		m[s]++
	}
	return m
}
