// Package cni loads, validates and runs CNI network configurations through
// libcni. A single-plugin .conf is run as a one-plugin list so that every
// network takes the same path (ADD, DEL, GC) through libcni.
package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"strings"
	"syscall"

	"github.com/containernetworking/cni/libcni"

	"github.com/circuit-cni/circuit/api"
)

// MaxConfigSize bounds a configuration file; real ones are a few KiB.
const MaxConfigSize = 1 << 20

// SupportedVersions are the CNI spec versions circuit accepts.
var SupportedVersions = []string{"0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// Config is a validated network configuration.
type Config struct {
	Name       string
	CNIVersion string
	Plugins    []string // plugin types in chain order
	IsList     bool
	Raw        []byte // as given
	List       *libcni.NetworkConfigList
}

// Parse validates raw CNI configuration bytes (.conf or .conflist).
func Parse(raw []byte) (*Config, error) {
	if len(raw) > MaxConfigSize {
		return nil, api.Errorf(api.ErrInvalid, "configuration is larger than 1 MiB")
	}
	var top map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&top); err != nil {
		return nil, api.Errorf(api.ErrInvalid, "configuration is not a JSON object: %v", err)
	}
	if dec.More() {
		return nil, api.Errorf(api.ErrInvalid, "configuration has data after its JSON object")
	}
	var head struct {
		Name       *string          `json:"name"`
		CNIVersion string           `json:"cniVersion"`
		Type       *string          `json:"type"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return nil, api.Errorf(api.ErrInvalid, "configuration: %v", err)
	}
	if head.Name == nil || *head.Name == "" {
		return nil, api.Errorf(api.ErrInvalid, "configuration has no \"name\"")
	}
	if err := api.ValidNetworkName(*head.Name); err != nil {
		return nil, err
	}
	if head.CNIVersion == "" {
		return nil, api.Errorf(api.ErrInvalid, "network %s: configuration has no \"cniVersion\"", *head.Name)
	}
	if !slices.Contains(SupportedVersions, head.CNIVersion) {
		return nil, api.Errorf(api.ErrInvalid, "network %s: cniVersion %q is not supported (use one of %s)", *head.Name, head.CNIVersion, strings.Join(SupportedVersions, ", "))
	}
	cfg := &Config{Name: *head.Name, CNIVersion: head.CNIVersion, Raw: raw}
	_, cfg.IsList = top["plugins"]

	var err error
	if cfg.IsList {
		if len(head.Plugins) == 0 {
			return nil, api.Errorf(api.ErrInvalid, "network %s: \"plugins\" is empty", cfg.Name)
		}
		for i, p := range head.Plugins {
			t, _ := p["type"].(string)
			if err := validateType(cfg.Name, t, i); err != nil {
				return nil, err
			}
			cfg.Plugins = append(cfg.Plugins, t)
		}
		cfg.List, err = libcni.NetworkConfFromBytes(raw)
	} else {
		if head.Type == nil {
			return nil, api.Errorf(api.ErrInvalid, "network %s: configuration has no \"type\"", cfg.Name)
		}
		if err := validateType(cfg.Name, *head.Type, -1); err != nil {
			return nil, err
		}
		cfg.Plugins = []string{*head.Type}
		var pc *libcni.PluginConfig
		if pc, err = libcni.NetworkPluginConfFromBytes(raw); err == nil {
			cfg.List, err = libcni.ConfListFromConf(pc) //nolint:staticcheck // .conf files are part of circuit's contract
		}
	}
	if err != nil {
		return nil, api.Errorf(api.ErrInvalid, "network %s: %v", cfg.Name, err)
	}
	return cfg, nil
}

func validateType(network, t string, index int) error {
	where := "configuration"
	if index >= 0 {
		where = fmt.Sprintf("plugin %d", index)
	}
	if t == "" {
		return api.Errorf(api.ErrInvalid, "network %s: %s has no \"type\"", network, where)
	}
	if err := api.ValidPluginType(t); err != nil {
		return fmt.Errorf("network %s: %s: %w", network, where, err)
	}
	return nil
}

// ReadFile reads a configuration file. Only a regular file is read, and it
// is opened without blocking, so a FIFO or device named by mistake (or by a
// hook's CNI_CONF) fails at once instead of hanging the caller.
func ReadFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	} else if !fi.Mode().IsRegular() {
		return nil, api.Errorf(api.ErrInvalid, "read %s: not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > MaxConfigSize {
		return nil, api.Errorf(api.ErrInvalid, "read %s: larger than 1 MiB", path)
	}
	return b, nil
}

// SameConfig reports whether two configurations are the same JSON, whatever
// their spacing and key order.
func SameConfig(a, b []byte) bool {
	var x, y any
	return json.Unmarshal(a, &x) == nil && json.Unmarshal(b, &y) == nil && reflect.DeepEqual(x, y)
}

// Capabilities lists the capabilities the chain's plugins declare
// ("capabilities": {"portMappings": true}): libcni passes a capability
// argument only to those, and drops it silently when none does.
func (c *Config) Capabilities() map[string]bool {
	out := map[string]bool{}
	for _, p := range c.List.Plugins {
		for k, v := range p.Network.Capabilities {
			if v {
				out[k] = true
			}
		}
	}
	return out
}
