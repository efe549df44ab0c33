// Command circuit gives runc containers CNI networks, QoS and load balancing.
//
// Build information comes from the linker:
//
//	go build -ldflags "-X main.version=v1.2.3 -X main.commit=$(git rev-parse HEAD)"
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/circuit-cni/circuit/cmd"
	"github.com/circuit-cni/circuit/controller"
	"github.com/circuit-cni/circuit/controller/local"
)

// Set with -X main.version=... and -X main.commit=...
var (
	version = "dev"
	commit  = "unknown"
)

func main() {
	cmd.Version, cmd.Commit = version, commit

	// A signal cancels the context, so the controller can roll back
	// half-done work instead of dying in the middle of it.
	// A second signal is not caught: it ends a process that does not stop.
	// (One goroutine where signal.NotifyContext and a stopper took two:
	// each costs every container start a thread's start-up.)
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		signal.Stop(sigs)
		cancel()
	}()
	app := cmd.NewApp(newController, os.Stdout, os.Stderr, os.Stdin, os.Args)
	err := app.Run(ctx, os.Args)
	if err != nil {
		// The one exit path: one line, no usage dump.
		fmt.Fprintf(os.Stderr, "circuit: %v\n", err)
	}
	os.Exit(cmd.ExitCode(err))
}

// newController is the one place that picks the Controller implementation.
func newController(ctx context.Context, g cmd.Globals) (controller.Controller, error) {
	return newLocalController(local.Config{
		StateDir:    g.StateDir,
		CNIPath:     g.CNIPath,
		RuncRoot:    g.RuncRoot,
		Log:         g.Log,
		LockTimeout: g.LockTimeout,
		UndoTimeout: g.UndoTimeout,
	})
}

func newLocalController(cfg local.Config) (controller.Controller, error) {
	c, err := local.New(cfg)
	if err != nil {
		return nil, err // not a typed nil inside a non-nil interface
	}
	return c, nil
}
