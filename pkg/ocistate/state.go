// Package ocistate reads the OCI state a runtime hands a hook on stdin and
// writes circuit's hook entries into a bundle's config.json.
package ocistate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/circuit-cni/circuit/api"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// MaxStateSize bounds what Decode reads: runc's state is a few hundred bytes,
// and a hook must not buffer an unbounded stream.
const MaxStateSize = 1 << 20

var (
	// ErrEmpty means the input held nothing but white space: the caller was
	// not run as a hook.
	ErrEmpty = errors.New("no OCI state")
	// ErrTooLarge means the input exceeded MaxStateSize.
	ErrTooLarge = errors.New("OCI state is larger than 1 MiB")
	// ErrMalformed wraps JSON syntax and type errors.
	ErrMalformed = errors.New("not OCI state JSON")
	// ErrInvalid wraps well-formed state that breaks the rules below.
	ErrInvalid = errors.New("invalid OCI state")
)

// Decode reads one OCI state document from r (at most MaxStateSize bytes)
// and validates it: a valid runc id, a known status, a non-negative pid that
// is present when the spec requires it (created, running), and nothing after
// the document but white space.
func Decode(r io.Reader) (*specs.State, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxStateSize+1))
	if err != nil {
		return nil, fmt.Errorf("read OCI state: %w", err)
	}
	if len(b) > MaxStateSize {
		return nil, ErrTooLarge
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, ErrEmpty
	}

	dec := json.NewDecoder(bytes.NewReader(b))
	var s specs.State
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	// A second value (or garbage) after the state means the writer and we
	// disagree about the stream: refuse rather than guess.
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing data after the state object", ErrMalformed)
	}
	if err := Validate(&s); err != nil {
		return nil, err
	}
	return &s, nil
}

// Validate applies Decode's rules to an already decoded state.
func Validate(s *specs.State) error {
	if s.ID == "" {
		return fmt.Errorf("%w: missing id", ErrInvalid)
	}
	if api.ValidContainerID(s.ID) != nil {
		return fmt.Errorf("%w: id %q is not a valid container id", ErrInvalid, truncate(s.ID, 80))
	}
	switch s.Status {
	case specs.StateCreating, specs.StateStopped:
		// creating: the spec does not require a pid yet; stopped: runc sends none.
	case specs.StateCreated, specs.StateRunning:
		if s.Pid <= 0 {
			return fmt.Errorf("%w: status %q needs a pid", ErrInvalid, s.Status)
		}
	case "":
		return fmt.Errorf("%w: missing status", ErrInvalid)
	default:
		return fmt.Errorf("%w: unknown status %q", ErrInvalid, truncate(string(s.Status), 80))
	}
	if s.Pid < 0 {
		return fmt.Errorf("%w: negative pid %d", ErrInvalid, s.Pid)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
