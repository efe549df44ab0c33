package ocistate

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestDecodeStatuses(t *testing.T) {
	for _, tc := range []struct {
		status string
		pid    string
	}{
		{"creating", `"pid": 4668,`},
		{"creating", ``}, // the spec does not require a pid yet
		{"created", `"pid": 4668,`},
		{"running", `"pid": 4668,`},
		{"stopped", ``}, // runc sends no pid at poststop
		{"stopped", `"pid": 4668,`},
	} {
		in := `{"ociVersion": "1.2.0", "id": "web-00", "status": "` + tc.status + `", ` + tc.pid + `
			"bundle": "/root/web-00", "annotations": {"circuit.network": "sandbox"}}`
		s, err := Decode(strings.NewReader(in))
		if err != nil {
			t.Errorf("%s %q: %v", tc.status, tc.pid, err)
			continue
		}
		want := &specs.State{Version: "1.2.0", ID: "web-00", Status: specs.ContainerState(tc.status),
			Bundle: "/root/web-00", Annotations: map[string]string{"circuit.network": "sandbox"}}
		if tc.pid != "" {
			want.Pid = 4668
		}
		if !reflect.DeepEqual(s, want) {
			t.Errorf("%s: got %+v, want %+v", tc.status, s, want)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     error
		msg      string
	}{
		{"empty", "", ErrEmpty, ""},
		{"blank", " \n\t", ErrEmpty, ""},
		{"malformed", `{"id": `, ErrMalformed, "not OCI state JSON: unexpected EOF"},
		{"not json", `hello`, ErrMalformed, "invalid character"},
		{"wrong type", `{"id": "a", "status": "created", "pid": "12"}`, ErrMalformed, "cannot unmarshal string"},
		{"array", `[]`, ErrMalformed, "cannot unmarshal array"},
		{"trailing garbage", `{"id":"a","status":"stopped"} x`, ErrMalformed, "trailing data"},
		{"two documents", `{"id":"a","status":"stopped"}{"id":"b","status":"stopped"}`, ErrMalformed, "trailing data"},
		{"missing id", `{"status": "stopped"}`, ErrInvalid, "missing id"},
		{"bad id", `{"id": "../etc", "status": "stopped"}`, ErrInvalid, "not a valid container id"},
		{"dot id", `{"id": "..", "status": "stopped"}`, ErrInvalid, "not a valid container id"},
		{"id with space", `{"id": "a b", "status": "stopped"}`, ErrInvalid, "not a valid container id"},
		{"long id", `{"id": "` + strings.Repeat("a", 1025) + `", "status": "stopped"}`, ErrInvalid, "not a valid container id"},
		{"missing status", `{"id": "a"}`, ErrInvalid, "missing status"},
		{"unknown status", `{"id": "a", "status": "paused", "pid": 1}`, ErrInvalid, `unknown status "paused"`},
		{"created without pid", `{"id": "a", "status": "created"}`, ErrInvalid, `status "created" needs a pid`},
		{"running without pid", `{"id": "a", "status": "running", "pid": 0}`, ErrInvalid, `status "running" needs a pid`},
		{"negative pid", `{"id": "a", "status": "stopped", "pid": -1}`, ErrInvalid, "negative pid"},
		{"oversized", `{"id": "a", "status": "stopped", "bundle": "` + strings.Repeat("x", MaxStateSize) + `"}`, ErrTooLarge, "larger than 1 MiB"},
	} {
		_, err := Decode(strings.NewReader(tc.in))
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
			continue
		}
		if !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %q does not mention %q", tc.name, err, tc.msg)
		}
	}
}

func TestDecodeExactlyMax(t *testing.T) {
	doc := `{"id": "a", "status": "stopped"}`
	in := doc + strings.Repeat(" ", MaxStateSize-len(doc))
	if _, err := Decode(strings.NewReader(in)); err != nil {
		t.Fatalf("state of exactly %d bytes: %v", MaxStateSize, err)
	}
	if _, err := Decode(strings.NewReader(in + " ")); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("state of %d bytes: %v", MaxStateSize+1, err)
	}
}

func TestDecodeUnknownFieldsAllowed(t *testing.T) {
	// Newer runtimes may add fields; a hook must keep working.
	if _, err := Decode(strings.NewReader(`{"id": "a", "status": "stopped", "future": {"x": 1}}`)); err != nil {
		t.Fatal(err)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"ociVersion":"1.2.0","id":"web-00","status":"creating","pid":4668,"bundle":"/root/web-00"}`))
	f.Add([]byte(`{"id":"x","status":"stopped"}`))
	f.Add([]byte(`{"id":"x","status":"running","pid":1,"annotations":{"circuit.network":"a,b"}} `))
	f.Add([]byte(`{"id":`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, in []byte) {
		s, err := Decode(bytes.NewReader(in))
		if err != nil {
			if !errors.Is(err, ErrEmpty) && !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrInvalid) {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		// Whatever Decode accepts must survive a round trip unchanged.
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		again, err := Decode(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("re-decoding %s: %v", b, err)
		}
		if !reflect.DeepEqual(s, again) {
			t.Fatalf("round trip changed %+v into %+v", s, again)
		}
	})
}
