package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/circuit-cni/circuit/pkg/lb"
	"github.com/circuit-cni/circuit/pkg/lb/nftables/legacy"
)

// lbOpArg makes the bench binary a one-shot load-balancer command: open
// the backend of a layout bound to a namespace, add or remove one target,
// close, exit. It times a command in the old layout, which today's
// circuit cannot write, the same way as in the new one.
//
//	bench __lb-op new|old NSPATH add|remove SERVICE-JSON TARGET-JSON
const lbOpArg = "__lb-op"

// targetOps is what both layouts' backends can do to a target.
type targetOps interface {
	AddTarget(lb.Service, lb.Target) error
	RemoveTarget(lb.Service, lb.Target) error
	Close() error
}

func lbOp(args []string) int {
	if err := runLBOp(args); err != nil {
		fmt.Fprintf(os.Stderr, "bench %s: %v\n", lbOpArg, err)
		return 1
	}
	return 0
}

func runLBOp(args []string) error {
	if len(args) != 5 {
		return fmt.Errorf("want LAYOUT NSPATH OP SERVICE TARGET, got %q", args)
	}
	var svc lb.Service
	var t lb.Target
	if err := json.Unmarshal([]byte(args[3]), &svc); err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(args[4]), &t); err != nil {
		return err
	}
	var b targetOps
	var err error
	switch args[0] {
	case "new":
		b, err = lb.Open(lb.Nftables, args[1])
	case "old":
		b, err = legacy.New(args[1])
	default:
		err = fmt.Errorf("layout %q: want new or old", args[0])
	}
	if err != nil {
		return err
	}
	switch args[2] {
	case "add":
		err = b.AddTarget(svc, t)
	case "remove":
		err = b.RemoveTarget(svc, t)
	default:
		err = fmt.Errorf("op %q: want add or remove", args[2])
	}
	if cerr := b.Close(); err == nil {
		err = cerr
	}
	return err
}

// op runs lbOp in a process of its own and returns its time, fork to exit.
func (l *lbLab) op(ctx context.Context, layout, ns, op string, svc lb.Service, t lb.Target) (time.Duration, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	sj, err := json.Marshal(svc)
	if err != nil {
		return 0, err
	}
	tj, err := json.Marshal(t)
	if err != nil {
		return 0, err
	}
	r, err := execTimed(ctx, nil, nil, self, lbOpArg, layout, ns, op, string(sj), string(tj))
	return r.took, err
}
