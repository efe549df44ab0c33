// Command testplugin is a CNI plugin for circuit's tests, configured in its
// own section of the network's configuration:
//
//	{"type": "circuit-test-plugin", "addMillis": 0, "delMillis": 1500,
//	 "gcMillis": 0, "marker": "/tmp/x", "failAdd": false, "failDel": false}
//
// On ADD it passes on the previous result (or returns an empty one) after
// addMillis; on DEL it succeeds after delMillis, on GC after gcMillis.
// The marker line also holds CNI_ARGS, and the capability arguments the
// plugin got (its runtimeConfig) when it declares any. Before it waits it
// appends its command to marker (one line per call), so a test can wait
// for the event rather than a clock. failAdd and failDel make the call
// fail. It changes nothing on the host.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"
)

type conf struct {
	CNIVersion string          `json:"cniVersion"`
	AddMillis  int             `json:"addMillis"`
	DelMillis  int             `json:"delMillis"`
	GCMillis   int             `json:"gcMillis"`
	Marker     string          `json:"marker"`
	FailAdd    bool            `json:"failAdd"`
	FailDel    bool            `json:"failDel"`
	PrevResult json.RawMessage `json:"prevResult"`
	Runtime    json.RawMessage `json:"runtimeConfig"`
}

func main() {
	cmd := os.Getenv("CNI_COMMAND")
	in, _ := io.ReadAll(os.Stdin)
	var c conf
	_ = json.Unmarshal(in, &c)
	if c.CNIVersion == "" {
		c.CNIVersion = "1.0.0"
	}
	if cmd == "VERSION" {
		fmt.Printf(`{"cniVersion": %q, "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}`, c.CNIVersion)
		return
	}
	if c.Marker != "" {
		if f, err := os.OpenFile(c.Marker, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600); err == nil {
			fmt.Fprintf(f, "%s %s %s args=%s runtimeConfig=%s\n", cmd, os.Getenv("CNI_CONTAINERID"), os.Getenv("CNI_IFNAME"), os.Getenv("CNI_ARGS"), c.Runtime)
			f.Close()
		}
	}
	fail := func(msg string) {
		fmt.Printf(`{"cniVersion": %q, "code": 999, "msg": %q}`, c.CNIVersion, msg)
		os.Exit(1)
	}
	switch cmd {
	case "ADD":
		time.Sleep(time.Duration(c.AddMillis) * time.Millisecond)
		if c.FailAdd {
			fail("test plugin: ADD fails as configured")
		}
		if len(c.PrevResult) > 0 {
			os.Stdout.Write(c.PrevResult)
			return
		}
		fmt.Printf(`{"cniVersion": %q}`, c.CNIVersion)
	case "GC":
		time.Sleep(time.Duration(c.GCMillis) * time.Millisecond)
	case "DEL":
		time.Sleep(time.Duration(c.DelMillis) * time.Millisecond)
		if c.FailDel {
			fail("test plugin: DEL fails as configured")
		}
	}
}
