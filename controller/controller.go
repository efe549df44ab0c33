// Package controller defines what circuit can do, independent of how it is done.
//
// The CLI in cmd/ talks only to the Controller interface. The default
// implementation lives in controller/local; an in-memory Fake in this package
// lets the CLI be tested without root. A second implementation plugs in by
// changing one constructor.
package controller

import (
	"context"
	"errors"
	"fmt"
)

// Sentinel errors. Implementations wrap them with context (%w); callers test
// them with errors.Is.
var (
	ErrNotFound    = errors.New("not found")
	ErrExists      = errors.New("already exists")
	ErrInvalid     = errors.New("invalid argument")
	ErrInUse       = errors.New("in use")
	ErrUnsupported = errors.New("not supported")
	ErrBusy        = errors.New("datastore busy")
	ErrPermission  = errors.New("permission denied")
)

// Controller is circuit's whole capability set.
type Controller interface {
	// Networks.
	CreateNetwork(ctx context.Context, config []byte, force bool) (*Network, error)
	ListNetworks(ctx context.Context) ([]Network, error)
	InspectNetwork(ctx context.Context, name string) (*Network, error)
	DeleteNetwork(ctx context.Context, name string, force bool) error

	// Attachments. Connect returns the recorded peer.
	Connect(ctx context.Context, req ConnectRequest) (*Peer, error)
	Disconnect(ctx context.Context, req DisconnectRequest) error

	// Quality of service. container == "" addresses the network's policy.
	SetQoS(ctx context.Context, network, container string, p QoSPolicy) error
	ResetQoS(ctx context.Context, network, container string) error
	ShowQoS(ctx context.Context, network string) ([]PeerQoS, error)

	// Load balancing.
	CreateService(ctx context.Context, svc Service) (*Service, error)
	AddTargets(ctx context.Context, service string, targets []Target) error
	RemoveTargets(ctx context.Context, service string, targets []string) error
	DeleteService(ctx context.Context, service string) error
	ListServices(ctx context.Context) ([]Service, error)
	ShowService(ctx context.Context, service string) (*ServiceStatus, error)

	// runc hooks: state is the OCI state runc wrote on stdin.
	Hook(ctx context.Context, req HookRequest) (*HookResult, error)

	// Repair.
	Restore(ctx context.Context) (*Report, error)
	GC(ctx context.Context, dryRun bool) (*Report, error)

	Close() error
}

// Errorf formats an error that matches kind with errors.Is without
// repeating kind's text: "container web-00 is already connected to network
// sandbox" rather than "already exists: container web-00 ...".
func Errorf(kind error, format string, a ...any) error {
	return &kindError{err: fmt.Errorf(format, a...), kind: kind}
}

type kindError struct {
	err  error
	kind error
}

func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }
