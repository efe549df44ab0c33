package ocistate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Hook kinds in the order the runtime spec lists them, for stable output.
var hookKinds = []string{"prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"}

// HookSet is circuit's entries for a config: one hook that sets up (run as
// prestart or createRuntime) and one that tears down (poststop).
type HookSet struct {
	Setup         specs.Hook
	Teardown      specs.Hook
	CreateRuntime bool // use createRuntime instead of the deprecated prestart
}

// Hooks returns the set as an OCI hooks block.
func (h HookSet) Hooks() specs.Hooks {
	out := specs.Hooks{Poststop: []specs.Hook{h.Teardown}}
	if h.CreateRuntime {
		out.CreateRuntime = []specs.Hook{h.Setup}
	} else {
		out.Prestart = []specs.Hook{h.Setup}
	}
	return out
}

func (h HookSet) entries() map[string]specs.Hook {
	if h.CreateRuntime {
		return map[string]specs.Hook{"createRuntime": h.Setup, "poststop": h.Teardown}
	}
	return map[string]specs.Hook{"prestart": h.Setup, "poststop": h.Teardown}
}

// member is one key of a JSON object with its value as written.
type member struct {
	key   string
	value json.RawMessage
}

// decodeObject returns an object's members in document order, so rewriting
// a config keeps its layout; duplicate keys are kept as they are.
func decodeObject(data []byte) ([]member, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		if err == nil {
			err = errors.New("not a JSON object")
		}
		return nil, err
	}
	var ms []member
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, _ := t.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		ms = append(ms, member{key, v})
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after the JSON object")
	}
	return ms, nil
}

func encodeObject(ms []member) []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, m := range ms {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := marshal(m.key)
		b.Write(k)
		b.WriteByte(':')
		b.Write(m.value)
	}
	b.WriteByte('}')
	return b.Bytes()
}

// marshal is json.Marshal without HTML escaping: paths and env values
// should read in config.json as they were typed.
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
}

// isSelf reports whether a hook entry was written for the binary at self.
func isSelf(raw json.RawMessage, self string) bool {
	var h struct {
		Path string `json:"path"`
	}
	return json.Unmarshal(raw, &h) == nil && h.Path == self
}

// MergeHooks returns config (an OCI config.json) with circuit's hooks set.
// Only "hooks" changes: every other key keeps its value and position. In
// "hooks", entries whose path is set.Setup.Path are circuit's own: they are
// dropped from every kind (so switching between prestart and createRuntime
// leaves no stale entry) and the new ones take the place of the first old
// one, or go last. Other entries stay as they were, so merging twice gives
// the same file. The result is indented like the input (a tab if it cannot
// tell) and ends in a newline.
func MergeHooks(config []byte, set HookSet) ([]byte, error) {
	self := set.Setup.Path
	if self == "" || set.Teardown.Path != self {
		return nil, errors.New("merge hooks: setup and teardown hooks need the same path")
	}
	top, err := decodeObject(config)
	if err != nil {
		return nil, fmt.Errorf("config is not a JSON object: %w", err)
	}
	hooksAt := -1
	var hooks []member
	for i, m := range top {
		if m.key != "hooks" {
			continue
		}
		if hooksAt < 0 {
			hooksAt = i
		}
		// Like a JSON decoder (and so runc), the last "hooks" wins.
		hooks = nil
		if !bytes.Equal(bytes.TrimSpace(m.value), []byte("null")) {
			if hooks, err = decodeObject(m.value); err != nil {
				return nil, fmt.Errorf("config hooks: %w", err)
			}
		}
	}

	want := set.entries()
	placed := map[string]bool{}
	emptied := map[int]bool{} // kinds that held only our old entries
	for i, m := range hooks {
		var list []json.RawMessage
		if !bytes.Equal(bytes.TrimSpace(m.value), []byte("null")) {
			if err := json.Unmarshal(m.value, &list); err != nil {
				return nil, fmt.Errorf("config hooks.%s: %w", m.key, err)
			}
		}
		kept := make([]json.RawMessage, 0, len(list)+1)
		for _, raw := range list {
			if !isSelf(raw, self) {
				kept = append(kept, raw)
				continue
			}
			if h, ok := want[m.key]; ok && !placed[m.key] {
				b, err := marshal(h)
				if err != nil {
					return nil, err
				}
				kept = append(kept, b)
				placed[m.key] = true
			}
		}
		if h, ok := want[m.key]; ok && !placed[m.key] {
			b, err := marshal(h)
			if err != nil {
				return nil, err
			}
			kept = append(kept, b)
			placed[m.key] = true
		}
		emptied[i] = len(kept) == 0 && len(list) > 0
		if hooks[i].value, err = marshal(kept); err != nil {
			return nil, err
		}
	}
	for _, kind := range hookKinds {
		h, ok := want[kind]
		if !ok || placed[kind] {
			continue
		}
		b, err := marshal([]specs.Hook{h})
		if err != nil {
			return nil, err
		}
		hooks = append(hooks, member{kind, b})
	}
	// Drop kinds that only we had used, so switching kinds leaves no "[]".
	kept := make([]member, 0, len(hooks))
	for i, m := range hooks {
		if !emptied[i] {
			kept = append(kept, m)
		}
	}
	block := member{"hooks", encodeObject(kept)}

	out := make([]member, 0, len(top)+1)
	for i, m := range top {
		switch {
		case m.key != "hooks":
			out = append(out, m)
		case i == hooksAt:
			out = append(out, block)
		}
	}
	if hooksAt < 0 {
		out = append(out, block)
	}

	var b bytes.Buffer
	if err := json.Indent(&b, encodeObject(out), "", indentOf(config)); err != nil {
		return nil, err
	}
	b.WriteByte('\n')
	return b.Bytes(), nil
}

// indentOf guesses a JSON document's indent unit from its first indented
// line: runc spec writes tabs, hand-written files often use spaces.
func indentOf(doc []byte) string {
	for i := 0; i < len(doc); i++ {
		if doc[i] != '\n' {
			continue
		}
		j := i + 1
		for j < len(doc) && (doc[j] == ' ' || doc[j] == '\t') {
			j++
		}
		if j > i+1 {
			return string(doc[i+1 : j])
		}
	}
	return "\t"
}

// InstallHooks merges set into the config.json at path (see MergeHooks)
// and replaces the file atomically: a runtime reading the bundle at the same
// time sees the old file or the new one, never a torn write. The file keeps
// its mode and, where the caller may set it, its owner.
func InstallHooks(path string, set HookSet) error {
	// circuit runs as root: a config.json that is a symlink could point at
	// any file, so it is not followed.
	real := path
	fi, err := os.Lstat(real)
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		return fmt.Errorf("%s is a symlink: not followed (give the bundle it belongs to)", path)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	f, err := os.OpenFile(real, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err // a symlink put there since gives ELOOP
	}
	old, err := io.ReadAll(io.LimitReader(f, MaxStateSize))
	f.Close()
	if err != nil {
		return err
	}
	updated, err := MergeHooks(old, set)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}

	tmp, err := os.CreateTemp(filepath.Dir(real), ".config.json.circuit-*")
	if err != nil {
		return err
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(fi.Mode().Perm()); err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		// Best effort: only root may give the file back to its owner.
		_ = tmp.Chown(int(st.Uid), int(st.Gid))
	}
	if _, err := tmp.Write(updated); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), real); err != nil {
		return err
	}
	done = true
	if d, err := os.Open(filepath.Dir(real)); err == nil {
		_ = d.Sync() // make the rename durable; not all filesystems support it
		d.Close()
	}
	return nil
}
