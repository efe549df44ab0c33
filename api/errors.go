package api

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Every layer wraps them with context (%w or Errorf);
// callers test them with errors.Is.
var (
	ErrNotFound    = errors.New("not found")
	ErrExists      = errors.New("already exists")
	ErrInvalid     = errors.New("invalid argument")
	ErrInUse       = errors.New("in use")
	ErrUnsupported = errors.New("not supported")
	ErrBusy        = errors.New("datastore busy")
	ErrPermission  = errors.New("permission denied")
	// ErrUnavailable: what circuit needs for this (circuit-agent, etcd)
	// cannot be reached now.
	ErrUnavailable = errors.New("unavailable")
)

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

// Join joins errors into one that errors.Is and errors.As see through, on
// one line ("; " between them): circuit prints an error as one line on
// stderr. nil errors are left out; no error at all is nil.
func Join(errs ...error) error {
	var j joined
	for _, err := range errs {
		if err != nil {
			j = append(j, err)
		}
	}
	if len(j) == 0 {
		return nil
	}
	return j
}

type joined []error

func (j joined) Error() string {
	msgs := make([]string, len(j))
	for i, err := range j {
		msgs[i] = strings.ReplaceAll(err.Error(), "\n", "; ")
	}
	return strings.Join(msgs, "; ")
}

func (j joined) Unwrap() []error { return j }
