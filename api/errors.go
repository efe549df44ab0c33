package api

import (
	"errors"
	"fmt"
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
