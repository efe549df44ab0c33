package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/circuit-cni/circuit/api"
)

var (
	// errNoClient: the agent has not reached etcd since it started.
	errNoClient = errors.New("not connected to etcd yet")
	// errCallBound is the cause of a context that --request-timeout ended.
	errCallBound = errors.New("request timeout")
)

// etcdErr wraps an etcd call's error with what the agent was doing. No
// answer (unreachable, no leader, too slow) is api.ErrUnavailable, which
// circuit prints as is; endpoints are named, credentials never (the
// endpoints hold none: ParseStore took them out).
func (a *Agent) etcdErr(ctx context.Context, what string, err error) error {
	if unanswered(ctx, err) {
		if ctx.Err() == nil || errors.Is(context.Cause(ctx), errCallBound) {
			// gRPC may know why (a TLS handshake refused, a connection
			// refused): say it, unless it is only the deadline again.
			why := ""
			if msg := err.Error(); !strings.HasSuffix(msg, context.DeadlineExceeded.Error()) {
				why = ": " + strings.ReplaceAll(msg, "\n", "; ")
			}
			return api.Errorf(api.ErrUnavailable, "etcd at %s does not answer within %s (%s%s)", a.where(), a.cfg.RequestTimeout, what, why)
		}
		return api.Errorf(api.ErrUnavailable, "etcd at %s: no answer in time (%s): %v", a.where(), what, context.Cause(ctx))
	}
	if errors.Is(err, errNoClient) {
		return api.Errorf(api.ErrUnavailable, "etcd at %s: %v (%s)", a.where(), err, what)
	}
	return fmt.Errorf("etcd at %s: %s: %w", a.where(), what, err)
}

func (a *Agent) where() string { return strings.Join(a.cfg.Endpoints, ",") }

// unanswered reports whether a call failed for want of an answer in time.
func unanswered(ctx context.Context, err error) bool {
	if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return true
	}
	code := codes.OK
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		code = ee.Code()
	} else if st, ok := status.FromError(err); ok {
		code = st.Code()
	}
	switch code {
	case codes.DeadlineExceeded, codes.Unavailable, codes.Canceled:
		return true
	}
	return errors.Is(err, rpctypes.ErrNoLeader) || errors.Is(err, rpctypes.ErrTimeout)
}
