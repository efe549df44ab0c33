package api

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
)

// Limits of the names circuit takes from users.
const (
	// MaxNameLength bounds network and service names: they become parts of
	// file and kernel object names.
	MaxNameLength = 63
	// MaxContainerIDLength bounds container IDs, well above the 255 bytes a
	// runc state directory's name can have.
	MaxContainerIDLength = 1024
	// MaxIfNameLength is the kernel's IFNAMSIZ less its NUL.
	MaxIfNameLength = 15
)

// ValidNetworkName checks a network name: 1 to 63 letters, digits, '_', '.'
// or '-', starting with a letter or digit (the CNI spec's rule, bounded).
func ValidNetworkName(name string) error {
	if !identifier(name, MaxNameLength, true, "_.-") {
		return Errorf(ErrInvalid, "network name %s: use 1 to %d letters, digits, '_', '.' or '-', starting with a letter or digit", quote(name), MaxNameLength)
	}
	return nil
}

// ValidServiceName checks a load-balanced service's name, by the same rule
// as network names.
func ValidServiceName(name string) error {
	if !identifier(name, MaxNameLength, true, "_.-") {
		return Errorf(ErrInvalid, "service name %s: use 1 to %d letters, digits, '_', '.' or '-', starting with a letter or digit", quote(name), MaxNameLength)
	}
	return nil
}

// ValidContainerID accepts every ID runc accepts (libcontainer's rule:
// letters, digits and _+.-, not "." or ".."), up to MaxContainerIDLength.
// An ID that CNI plugins would refuse reaches them as CNIContainerID(id).
func ValidContainerID(id string) error {
	if len(id) > MaxContainerIDLength || !identifier(id, 0, false, "_+.-") || id == "." || id == ".." {
		return Errorf(ErrInvalid, "container id %s: use letters, digits, '_', '+', '.' or '-' (at most %d)", quote(id), MaxContainerIDLength)
	}
	return nil
}

// ValidIfName checks an interface name as the kernel does
// (dev_valid_name): 1 to 15 bytes, not "." or "..", no '/', ':' or white
// space; circuit also keeps to printable ASCII.
func ValidIfName(name string) error {
	if name == "" || len(name) > MaxIfNameLength || name == "." || name == ".." {
		return Errorf(ErrInvalid, "interface name %s must be 1 to %d characters, not . or ..", quote(name), MaxIfNameLength)
	}
	for i := 0; i < len(name); i++ {
		if b := name[i]; b == '/' || b == ':' || b <= ' ' || b > '~' {
			return Errorf(ErrInvalid, "interface name %s has a character the kernel refuses", quote(name))
		}
	}
	return nil
}

// maxCNIIDLength keeps libcni's cache file, <network>-<id>-<ifname>, under
// the 255 bytes a file name may have.
const maxCNIIDLength = 128

// CNIContainerID is the CNI_CONTAINERID circuit hands plugins for a
// container: the ID itself when CNI's stricter rule (a letter or digit
// first; letters, digits, '_', '.' and '-') takes it and it is short enough
// for libcni's cache, else "circuit-" and a hash of it. Plugins record it
// (host-local's reservations, rule comments), so it never changes for an ID.
func CNIContainerID(id string) string {
	if identifier(id, maxCNIIDLength, true, "_.-") {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "circuit-" + hex.EncodeToString(sum[:16])
}

// identifier reports whether s is 1 to max bytes long (no bound when max is
// 0), made of ASCII letters, digits and the bytes in extra only, and starts
// with a letter or digit when alnumFirst is set.
func identifier(s string, max int, alnumFirst bool, extra string) bool {
	if s == "" || (max > 0 && len(s) > max) {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		switch {
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		case i == 0 && alnumFirst:
			return false
		case !contains(extra, b):
			return false
		}
	}
	return true
}

func contains(set string, b byte) bool {
	for i := 0; i < len(set); i++ {
		if set[i] == b {
			return true
		}
	}
	return false
}

// quote keeps error messages one short line even for hostile input.
func quote(s string) string {
	const limit = 40
	if len(s) > limit {
		s = s[:limit] + "..."
	}
	return strconv.Quote(s)
}

// ValidPluginType checks a CNI plugin type: plugins are looked up as
// executables in the CNI path, so a type is a bare name, never a path.
func ValidPluginType(t string) error {
	if !identifier(t, 128, true, "_.-") {
		return Errorf(ErrInvalid, "plugin type %s must be a plain plugin name, not a path", quote(t))
	}
	return nil
}
