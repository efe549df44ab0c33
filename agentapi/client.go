package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"time"

	"github.com/circuit-cni/circuit/api"
)

// DefaultTimeout bounds a request to the agent, which bounds its own
// requests to etcd below it: with no agent, or an agent that cannot reach
// etcd, a command fails within it, with nothing changed.
const DefaultTimeout = 5 * time.Second

// Client talks to the agent of one state dir.
type Client struct {
	socket  string
	timeout time.Duration
	http    *http.Client
}

// NewClient returns a client for the agent whose socket is in stateDir.
func NewClient(stateDir string, timeout time.Duration) *Client {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	sock := filepath.Join(stateDir, SocketName)
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}
	return &Client{socket: sock, timeout: timeout, http: &http.Client{Transport: tr}}
}

// Do sends in (nil: no body) to path with method and decodes the answer
// into out (nil: none). An agent that does not answer is ErrUnavailable.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://circuit-agent"+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return api.Errorf(api.ErrUnavailable, "circuit-agent at %s does not answer (is it running?): %v", c.socket, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return api.Errorf(api.ErrUnavailable, "circuit-agent at %s: %v", c.socket, err)
	}
	if resp.StatusCode >= 300 {
		var e Error
		if json.Unmarshal(b, &e) != nil || e.Message == "" {
			return fmt.Errorf("circuit-agent: %s", resp.Status)
		}
		return e.Err()
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("circuit-agent: answer: %w", err)
	}
	return nil
}

// Status is the HTTP status an error's kind answers with.
func Status(kind string) int {
	switch kind {
	case "not-found":
		return http.StatusNotFound
	case "exists", "in-use", "busy":
		return http.StatusConflict
	case "invalid":
		return http.StatusBadRequest
	case "permission":
		return http.StatusForbidden
	case "unsupported":
		return http.StatusNotImplemented
	case "unavailable":
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}
