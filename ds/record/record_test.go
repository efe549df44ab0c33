package record

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/api"
)

var at = time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)

func TestRoundTrip(t *testing.T) {
	pol := &api.QoSPolicy{Rate: 5e6, Ceiling: 6e6, Delay: 50 * time.Millisecond, Jitter: time.Millisecond, Loss: 0.5, Direction: api.DirBoth}
	n := &api.Network{Name: "n", Type: "bridge", Plugins: []string{"bridge", "portmap"}, CNIVersion: "1.1.0", IsList: true,
		Config: []byte(`{"name":"n"}`), CreatedAt: at, QoS: pol, OwnedBridge: "cni0", GC: &api.Process{PID: 8, Start: 88},
		Cluster: &api.Cluster{Overlay: "vxlan", BlockSize: 26, BlockSize6: 120, Blocks: []string{"10.1.0.64/26"}, VNI: 4097, Node: "a", MTU: 1450}}
	allSet(t, *n, "Peers") // peers are records of their own
	allSet(t, *n.Cluster)
	b, err := EncodeNetwork(n)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := DecodeNetwork(b); err != nil || !reflect.DeepEqual(got, n) {
		t.Errorf("network: %+v, %v", got, err)
	}
	p := &api.Peer{Network: "n", ContainerID: "c", PID: 3, IfName: "eth0", IPs: []string{"10.0.0.2/24"}, MAC: "02:00:00:00:00:01",
		HostIf: "veth1", Netns: "/x", State: api.PeerConnecting, ConnectedAt: at, QoS: pol, Owner: &api.Process{PID: 9, Start: 99},
		Node: "a", PIDStart: 1234, BootID: "boot", Config: []byte(`{"name":"old"}`),
		Settings: api.Settings{Publish: []api.PortMapping{{HostIP: "fd00::1", HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}},
			RequestedIPs: []string{"10.0.0.2"}, RequestedMAC: "02:00:00:00:00:01", Aliases: []string{"www"}, Name: "web"}}
	allSet(t, *p)
	allSet(t, p.Settings)
	b, err = EncodePeer(p)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := DecodePeer(b); err != nil || !reflect.DeepEqual(got, p) {
		t.Errorf("peer: %+v, %v", got, err)
	}
	s := &api.Service{Name: "s", Address: "10.0.0.1:80", Protocol: "udp", Scheduler: "sh", Persistence: time.Minute, Backend: "ipvs",
		Targets:   []api.Target{{Address: "10.0.0.2:80", Weight: 3, Forward: "dr", DrainUntil: at, DrainOwner: api.Process{PID: 7, Start: 77}}},
		CreatedAt: at, Cluster: true, Drain: 30 * time.Second, BootID: "boot"}
	allSet(t, *s)
	allSet(t, s.Targets[0])
	b, err = EncodeService(s)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := DecodeService(b); err != nil || !reflect.DeepEqual(got, s) {
		t.Errorf("service: %+v, %v", got, err)
	}
	// Records are not the CLI's JSON: durations are nanoseconds.
	if !strings.Contains(string(b), `"persistenceNanos":60000000000`) || !strings.Contains(string(b), `"v":2`) {
		t.Errorf("service record %s", b)
	}
}

// allSet fails when a field of v is zero: a field added to the api types
// must be added to this round trip, or the datastore may drop it unseen.
func allSet(t *testing.T, v any, except ...string) {
	t.Helper()
	rv := reflect.ValueOf(v)
	for i := range rv.NumField() {
		f := rv.Type().Field(i)
		if f.IsExported() && rv.Field(i).IsZero() && !slices.Contains(except, f.Name) {
			t.Errorf("%s.%s is not set in the round trip", rv.Type().Name(), f.Name)
		}
	}
}

func TestVersions(t *testing.T) {
	if _, err := DecodeNetwork([]byte(`{"v":3,"name":"n"}`)); err == nil || !strings.Contains(err.Error(), "version 3 is newer") {
		t.Errorf("a newer record: %v", err)
	}
	if _, err := DecodePeer([]byte(`{"name":"n"}`)); err == nil || !strings.Contains(err.Error(), "was not migrated") {
		t.Errorf("an unversioned record: %v", err)
	}
}

func TestFromV1(t *testing.T) {
	b, err := ServiceFromV1([]byte(`{"name":"dns","address":"10.0.0.1:53","protocol":"udp","scheduler":"rr","persistence":"30s","backend":"nftables","targets":null,"createdAt":"2026-01-02T03:04:05Z"}`))
	if err != nil {
		t.Fatal(err)
	}
	s, err := DecodeService(b)
	if err != nil || s.Persistence != 30*time.Second || s.Targets == nil || s.Backend != "nftables" {
		t.Errorf("service from schema 1: %+v, %v", s, err)
	}
	b, err = PeerFromV1([]byte(`{"network":"n","containerID":"c","pid":3,"ifname":"eth0","ips":["10.0.0.2/24"],"hostInterface":"veth1","netns":"/x","state":"connecting","connectedAt":"2026-01-02T03:04:05Z","qos":{"delay":"50ms","direction":"ingress"},"owner":{"pid":9,"start":99}}`))
	if err != nil {
		t.Fatal(err)
	}
	p, err := DecodePeer(b)
	if err != nil || p.HostIf != "veth1" || p.QoS.Delay != 50*time.Millisecond || p.QoS.Direction != api.DirIngress || p.Owner.Start != 99 || p.State != api.PeerConnecting {
		t.Errorf("peer from schema 1: %+v (qos %+v), %v", p, p.QoS, err)
	}
	if _, err := NetworkFromV1([]byte(`{`)); err == nil {
		t.Error("a broken schema 1 value converted")
	}
}
