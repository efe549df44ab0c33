// Package agentapi is how circuit talks to circuit-agent, the node agent
// that holds the cluster's etcd client: HTTP with JSON bodies over a unix
// socket under the state dir (mode 0600, root only). circuit never links
// etcd; what a cluster-wide change needs goes through here, and what a
// connect needs is already in the node's replica.
//
// Errors travel as {"kind", "message"}: kind names an api sentinel, so
// errors.Is works on both sides of the socket.
package agentapi

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/circuit-cni/circuit/api"
)

// SocketName is the agent's socket, in the node's state dir.
const SocketName = "agent.sock"

// IPAMDir is where, under a node's state dir, host-local keeps the
// reservations of cluster networks: circuit's alone, so gc may release
// what no record explains, and the agent counts the free addresses of the
// node's blocks there (<IPAMDir>/<network>/<ip>).
const IPAMDir = "cluster-ipam"

// Paths of the API.
const (
	PathNetworks = "/v1/networks"            // POST: create; DELETE .../{name}?force=1
	PathServices = "/v1/services"            // POST: create; DELETE .../{name}
	PathTargets  = "/v1/services/%s/targets" // POST: add; DELETE: remove
	PathNodes    = "/v1/nodes"               // GET
	PathGC       = "/v1/gc"                  // POST
	PathNotify   = "/v1/notify"              // POST: this node's peers changed
	PathPeers    = "/v1/peers"               // GET ?network=NAME: Peers, every node's
)

// CreateNetwork asks for a cluster network.
type CreateNetwork struct {
	Config     json.RawMessage `json:"config"`
	Force      bool            `json:"force,omitempty"`
	Overlay    string          `json:"overlay"`
	BlockSize  int             `json:"blockSize,omitempty"`
	BlockSize6 int             `json:"blockSize6,omitempty"`
}

// Targets adds (POST) or removes (DELETE, Addresses) a cluster service's
// targets.
type Targets struct {
	Targets   []api.Target `json:"targets,omitempty"`
	Addresses []string     `json:"addresses,omitempty"`
}

// GC asks for gc --cluster.
type GC struct {
	Grace  Duration `json:"grace"`
	DryRun bool     `json:"dryRun,omitempty"`
}

// Notify tells the agent a network's peers on this node changed.
type Notify struct {
	Network string `json:"network"`
}

// Peers lists a cluster network's peers on every node (Node set).
type Peers struct {
	Peers []api.Peer `json:"peers"`
}

// Nodes lists the cluster's nodes.
type Nodes struct {
	Nodes []api.Node `json:"nodes"`
}

// Error is an error's body: Kind is one of the kinds below.
type Error struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
}

// Error kinds, one per api sentinel.
var kinds = map[string]error{
	"not-found":   api.ErrNotFound,
	"exists":      api.ErrExists,
	"invalid":     api.ErrInvalid,
	"in-use":      api.ErrInUse,
	"unsupported": api.ErrUnsupported,
	"busy":        api.ErrBusy,
	"permission":  api.ErrPermission,
	"unavailable": api.ErrUnavailable,
}

// ErrorOf is the body for err.
func ErrorOf(err error) Error {
	for k, sentinel := range kinds {
		if errors.Is(err, sentinel) {
			return Error{Kind: k, Message: err.Error()}
		}
	}
	return Error{Kind: "internal", Message: err.Error()}
}

// Err turns a body back into an error matching its sentinel.
func (e Error) Err() error {
	if sentinel, ok := kinds[e.Kind]; ok {
		return api.Errorf(sentinel, "%s", e.Message)
	}
	return errors.New(e.Message)
}

// Duration reads and writes JSON as "1h30m".
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}
