package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/circuit-cni/circuit/agentapi"
	"github.com/circuit-cni/circuit/api"
)

// maxBody bounds a request: a configuration is at most 1 MiB, and JSON
// may escape it.
const maxBody = 4 << 20

// server is the socket API being served.
type server struct {
	http *http.Server
	done chan struct{}
}

// serve listens on <state>/agent.sock (0600: the state dir is root's, and
// the socket changes the cluster) and serves the API in the background. A
// socket file left by an agent that died is replaced; one an agent still
// answers on is not.
func (a *Agent) serve() (*server, error) {
	path := filepath.Join(a.cfg.StateDir, agentapi.SocketName)
	if _, err := os.Lstat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, api.Errorf(api.ErrInUse, "another circuit-agent is serving %s", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
		a.log.Infof("removed stale socket %s", path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// The state dir is 0700 already; this closes the socket to root alone.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	s := &server{
		http: &http.Server{Handler: a.routes(), ReadHeaderTimeout: agentapi.DefaultTimeout},
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Errorf("serve %s: %v", path, err)
		}
	}()
	return s, nil
}

// stop stops serving, letting requests in flight finish within their
// bound; the listener removes the socket file.
func (s *server) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), agentapi.DefaultTimeout)
	defer cancel()
	_ = s.http.Shutdown(ctx)
	<-s.done
}

func (a *Agent) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+agentapi.PathNetworks, a.handle(a.createNetwork))
	mux.HandleFunc("DELETE "+agentapi.PathNetworks+"/{name}", a.handle(a.deleteNetwork))
	mux.HandleFunc("POST "+agentapi.PathServices, a.handle(a.createService))
	mux.HandleFunc("DELETE "+agentapi.PathServices+"/{name}", a.handle(a.deleteService))
	mux.HandleFunc("POST "+fmt.Sprintf(agentapi.PathTargets, "{name}"), a.handle(a.addTargets))
	mux.HandleFunc("DELETE "+fmt.Sprintf(agentapi.PathTargets, "{name}"), a.handle(a.removeTargets))
	mux.HandleFunc("GET "+agentapi.PathNodes, a.handle(a.listNodes))
	mux.HandleFunc("GET "+agentapi.PathPeers, a.handle(a.listPeers))
	mux.HandleFunc("POST "+agentapi.PathGC, a.handle(a.gc))
	mux.HandleFunc("POST "+agentapi.PathNotify, a.handle(a.notify))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, api.Errorf(api.ErrNotFound, "circuit-agent has no %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// handler answers one request: its result (nil: no body), or an error.
type handler func(ctx context.Context, r *http.Request) (any, error)

// answerBound bounds a whole request (each etcd request in it is bounded
// by --request-timeout): circuit hears the agent's answer, not its own
// timeout.
const answerBound = agentapi.DefaultTimeout * 9 / 10

// handle runs h under answerBound and writes its answer.
func (a *Agent) handle(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), answerBound)
		defer cancel()
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		out, err := h(ctx, r)
		if err != nil {
			a.log.Debugf("%s %s: %v", r.Method, r.URL.Path, err)
			writeError(w, err)
			return
		}
		if out == nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		writeJSON(w, http.StatusOK, out)
	}
}

func writeError(w http.ResponseWriter, err error) {
	e := agentapi.ErrorOf(err)
	writeJSON(w, statusOf(e.Kind), e)
}

// statusOf is the HTTP status an error's kind answers with.
func statusOf(kind string) int {
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

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"kind":"internal","message":"encode answer"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

// decode reads a request's JSON body into v.
func decode(r *http.Request, v any) error {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return api.Errorf(api.ErrInvalid, "request body: %v", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return api.Errorf(api.ErrInvalid, "request body: %v", err)
	}
	return nil
}
