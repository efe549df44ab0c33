package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/api"
)

// serve answers on dir's agent socket with a net/http server, as
// circuit-agent does, and returns it for the client to talk to.
func serve(t *testing.T, h http.Handler) string {
	t.Helper()
	dir := t.TempDir()
	l, err := net.Listen("unix", filepath.Join(dir, SocketName))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return dir
}

// The hand-made HTTP/1.0 client against Go's server: bodies both ways,
// answers with a length and answers ended by the close (larger than the
// server's buffer, with no Content-Length set), errors by kind.
func TestClientAgainstHTTPServer(t *testing.T) {
	big := strings.Repeat("x", 64<<10)
	dir := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/echo":
			b, _ := io.ReadAll(r.Body)
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"method":"` + r.Method + `","query":"` + r.URL.Query().Get("network") + `","got":` + string(b) + `}`))
		case "/big":
			_ = json.NewEncoder(w).Encode(map[string]string{"v": big})
		case "/missing":
			w.WriteHeader(http.StatusNotFound)
			_ = json.NewEncoder(w).Encode(Error{Kind: "not-found", Message: "no network x"})
		case "/plain":
			http.Error(w, "teapot", http.StatusTeapot)
		}
	}))
	c := NewClient(dir, time.Second)
	ctx := context.Background()

	var echo struct {
		Method, Query string
		Got           Notify
	}
	if err := c.Do(ctx, MethodPost, "/echo?network=n1", Notify{Network: "web"}, &echo); err != nil {
		t.Fatal(err)
	}
	if echo.Method != "POST" || echo.Query != "n1" || echo.Got.Network != "web" {
		t.Errorf("echo = %+v", echo)
	}

	var got map[string]string
	if err := c.Do(ctx, MethodGet, "/big", nil, &got); err != nil {
		t.Fatal(err)
	}
	if got["v"] != big {
		t.Errorf("a %d-byte answer read as %d bytes", len(big), len(got["v"]))
	}

	err := c.Do(ctx, MethodDelete, "/missing", nil, nil)
	if !errors.Is(err, api.ErrNotFound) || !strings.Contains(err.Error(), "no network x") {
		t.Errorf("an error answer of kind not-found = %v", err)
	}
	if err := c.Do(ctx, MethodGet, "/plain", nil, nil); err == nil || err.Error() != "circuit-agent: 418 I'm a teapot" {
		t.Errorf("an error answer without a kind = %v", err)
	}
}

// No agent, or one that never answers: ErrUnavailable, within the timeout.
func TestClientUnavailable(t *testing.T) {
	err := NewClient(t.TempDir(), time.Second).Do(context.Background(), MethodGet, PathNodes, nil, nil)
	if !errors.Is(err, api.ErrUnavailable) || !strings.Contains(err.Error(), "is it running?") {
		t.Errorf("with no agent: %v", err)
	}

	hang := make(chan struct{})
	defer close(hang)
	dir := serve(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-hang }))
	start := time.Now()
	err = NewClient(dir, 200*time.Millisecond).Do(context.Background(), MethodGet, PathNodes, nil, nil)
	if !errors.Is(err, api.ErrUnavailable) || !strings.Contains(err.Error(), "deadline exceeded") {
		t.Errorf("with an agent that does not answer: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("gave up after %s, with a timeout of 200ms", d)
	}
}
