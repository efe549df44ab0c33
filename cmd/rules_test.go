package cmd

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/circuit-cni/circuit/internal/ruletable"
)

// TestRules runs the shared rule table (internal/ruletable) through the
// command line: the verdict must be the one the controllers and the
// datastore give (controller/contract, ds/dstest run the same table).
func TestRules(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.must("network", "create", h.conf("rules", "bridge", "10.250.9.0/24"))
	h.must("network", "create", h.capsConf("rulespub", "10.250.8.0/24"))
	h.must("lb", "create", "rules", "10.250.2.10:80")
	pid := strconv.Itoa(h.fake.Start())
	for i, tc := range ruletable.Cases {
		t.Run(tc.Name(), func(t *testing.T) {
			addr := fmt.Sprintf("10.250.3.%d:80", i%250+1)
			var args, undo []string
			switch tc.Kind {
			case ruletable.NetworkName:
				args = []string{"network", "create", "-"}
				h.stdin = fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %s, "type": "bridge"}`, jsonString(tc.Value))
				undo = []string{"network", "delete", tc.Value}
			case ruletable.ServiceName:
				args, undo = []string{"lb", "create", tc.Value, addr}, []string{"lb", "delete", tc.Value}
			case ruletable.Address:
				args, undo = []string{"lb", "create", "r", tc.Value}, []string{"lb", "delete", "r"}
			case ruletable.Protocol:
				args, undo = []string{"lb", "create", "r", addr, "--protocol=" + tc.Value}, []string{"lb", "delete", "r"}
			case ruletable.Scheduler:
				args, undo = []string{"lb", "create", "r", addr, "--scheduler=" + tc.Value}, []string{"lb", "delete", "r"}
			case ruletable.Weight:
				args = []string{"lb", "add", "rules", "10.250.2.2:8080", "--weight=" + tc.Value}
				undo = []string{"lb", "remove", "rules", "10.250.2.2:8080"}
			case ruletable.Forward:
				args = []string{"lb", "add", "rules", "10.250.2.2:8080", "--forward=" + tc.Value}
				undo = []string{"lb", "remove", "rules", "10.250.2.2:8080"}
			case ruletable.IfName:
				args = []string{"network", "connect", "--ifname=" + tc.Value, pid, "rules"}
				undo = []string{"network", "disconnect", pid, "rules"}
			case ruletable.Publish:
				args = []string{"network", "connect", "--publish=" + tc.Value, pid, "rulespub"}
				undo = []string{"network", "disconnect", pid, "rulespub"}
			case ruletable.MAC:
				args = []string{"network", "connect", "--mac=" + tc.Value, pid, "rulespub"}
				undo = []string{"network", "disconnect", pid, "rulespub"}
			case ruletable.Rate:
				args, undo = []string{"network", "qos", "set", "--rate=" + tc.Value, "rules"}, []string{"network", "qos", "reset", "rules"}
			case ruletable.ContainerID:
				// Hook mode: runc hands the ID in the OCI state.
				h.stdin = fmt.Sprintf(`{"ociVersion": "1.2.0", "id": %s, "status": "creating", "pid": %s, "annotations": {"circuit.network": "rules"}}`, jsonString(tc.Value), pid)
				r := h.run()
				h.stdin = ""
				if r.err == nil {
					h.stdin = fmt.Sprintf(`{"ociVersion": "1.2.0", "id": %s, "status": "stopped"}`, jsonString(tc.Value))
					h.must()
					h.stdin = ""
				}
				verdict(t, tc, r)
				return
			default:
				t.Fatalf("no command judges %s", tc.Kind)
			}
			r := h.run(args...)
			h.stdin = ""
			if r.err == nil {
				h.must(undo...)
			}
			verdict(t, tc, r)
		})
	}
}

func verdict(t *testing.T, tc ruletable.Case, r result) {
	t.Helper()
	switch {
	case tc.Valid && r.err != nil:
		t.Errorf("%s %q refused: %s", tc.Kind, tc.Value, r.line())
	case !tc.Valid && r.err == nil:
		t.Errorf("%s %q accepted", tc.Kind, tc.Value)
	case !tc.Valid && (strings.Contains(r.line(), "\n") || r.stderr != ""):
		t.Errorf("%s %q: want one error line, got %q and stderr %q", tc.Kind, tc.Value, r.line(), r.stderr)
	}
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
