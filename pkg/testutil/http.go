package testutil

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// HTTPGet fetches url on a new connection (no keep-alive, so every call is
// a new connection a load balancer schedules afresh) and returns the body
// with surrounding space trimmed; any status but 200 is an error.
func HTTPGet(url string, timeout time.Duration) (string, error) {
	tr := &http.Transport{
		DisableKeepAlives: true,
		Proxy:             nil,
		DialContext:       (&net.Dialer{Timeout: timeout}).DialContext,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: timeout}
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("GET %s: read body: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return strings.TrimSpace(string(body)), nil
}

// WaitHTTP polls url until it answers 200 and returns the body; it fails
// the test after timeout.
func WaitHTTP(t testing.TB, url string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		body, err := HTTPGet(url, time.Second)
		if err == nil {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer within %s: %v", url, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// DialTCP opens and closes a TCP connection to addr: nil if one is
// accepted within timeout, else the dial error (refused, timeout,
// unreachable).
func DialTCP(addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	conn.Close()
	return nil
}

// IsNoAnswer reports whether a dial error means nobody answered: refused,
// timed out or unreachable.
func IsNoAnswer(err error) bool {
	if err == nil {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	s := err.Error()
	return strings.Contains(s, "connection refused") || strings.Contains(s, "unreachable") || strings.Contains(s, "no route to host")
}
