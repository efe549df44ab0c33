package qos

import "github.com/circuit-cni/circuit/api"

// kindError is a one-line, user-facing message that still matches a
// controller sentinel with errors.Is, without appending the sentinel's text.
type kindError struct {
	msg  string
	kind error
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

func invalidPolicy(reason string) error {
	return &kindError{msg: "invalid qos policy: " + reason, kind: api.ErrInvalid}
}

// ErrNoNetem says, in one line matching api.ErrUnsupported, that the
// kernel lacks netem.
var ErrNoNetem error = &kindError{
	msg:  "delay, jitter and loss need the kernel's netem qdisc (sch_netem), which this kernel does not have",
	kind: api.ErrUnsupported,
}
