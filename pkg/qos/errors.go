package qos

import "github.com/circuit-cni/circuit/controller"

// kindError is a one-line, user-facing message that still matches a
// controller sentinel with errors.Is, without appending the sentinel's text.
type kindError struct {
	msg  string
	kind error
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

func invalid(what, input, reason string) error {
	return &kindError{msg: "invalid " + what + " " + quote(input) + ": " + reason, kind: controller.ErrInvalid}
}

func invalidPolicy(reason string) error {
	return &kindError{msg: "invalid qos policy: " + reason, kind: controller.ErrInvalid}
}

// errNoNetem names the missing feature in one line.
var errNoNetem error = &kindError{
	msg:  "delay, jitter and loss need the kernel's netem qdisc (sch_netem), which this kernel does not have",
	kind: controller.ErrUnsupported,
}
