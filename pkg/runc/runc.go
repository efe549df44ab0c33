// Package runc finds runc containers by ID or PID from runc's state
// directory, so users can name a container the way `runc list` shows it.
package runc

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/circuit-cni/circuit/api"
)

// DefaultRoot is runc's default --root for root.
const DefaultRoot = "/run/runc"

// Container is a running container's identity.
type Container struct {
	ID  string // runc ID, or "pid-<pid>-<start>" for a process runc does not know
	PID int
}

type state struct {
	ID        string `json:"id"`
	InitPID   int    `json:"init_process_pid"`
	InitStart uint64 `json:"init_process_start"`
}

// Resolve finds a running container named by PID or runc ID.
func Resolve(root, arg string) (*Container, error) {
	if root == "" {
		root = DefaultRoot
	}
	if pid, err := strconv.Atoi(arg); err == nil {
		if pid <= 0 {
			return nil, api.Errorf(api.ErrInvalid, "pid %d is not a process id", pid)
		}
		start, err := StartTime(pid)
		if err != nil {
			return nil, api.Errorf(api.ErrNotFound, "no process with pid %d", pid)
		}
		if st := byPID(root, pid); st != nil {
			return &Container{ID: st.ID, PID: pid}, nil
		}
		return &Container{ID: fmt.Sprintf("pid-%d-%d", pid, start), PID: pid}, nil
	}
	if err := api.ValidContainerID(arg); err != nil {
		return nil, err
	}
	st, err := read(filepath.Join(root, arg, "state.json"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, api.Errorf(api.ErrNotFound, "no runc container %q under %s", arg, root)
		}
		return nil, fmt.Errorf("runc container %s: %w", arg, err)
	}
	if st.InitPID <= 0 {
		return nil, api.Errorf(api.ErrNotFound, "runc container %q is not running", arg)
	}
	if start, err := StartTime(st.InitPID); err != nil || (st.InitStart != 0 && start != st.InitStart) {
		return nil, api.Errorf(api.ErrNotFound, "runc container %q is not running", arg)
	}
	return &Container{ID: st.ID, PID: st.InitPID}, nil
}

func read(path string) (*state, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return &st, nil
}

func byPID(root string, pid int) *state {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil
	}
	for _, e := range entries {
		if st, err := read(filepath.Join(root, e.Name(), "state.json")); err == nil && st.InitPID == pid {
			return st
		}
	}
	return nil
}

// StartTime is a process's start time in clock ticks since boot (field 22 of
// /proc/PID/stat); with the PID it identifies a process across PID reuse.
func StartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name may contain spaces and parentheses: skip past the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 20 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}
