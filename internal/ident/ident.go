// Package ident checks the names circuit takes from users (networks, plugin
// types, services, container IDs). It replaces regular expressions that
// every circuit process compiled at start-up, on the path of every hook.
package ident

// Valid reports whether s is 1 to max bytes long (no bound when max is 0),
// made of ASCII letters, digits and the bytes in extra only, and starts
// with a letter or digit when alnumFirst is set.
func Valid(s string, max int, alnumFirst bool, extra string) bool {
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
