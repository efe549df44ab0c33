// Package ruletable is one table of valid and invalid user input (names,
// IDs, protocols, schedulers, weights, rates, addresses), with the verdict
// circuit must give. The CLI's tests, the controller contract suite (Fake and
// local controller) and the datastore contract suite all run it, so a rule
// that drifts in one layer fails there.
package ruletable

import "strings"

// Kind names what a value is.
type Kind string

const (
	NetworkName Kind = "network name"
	ServiceName Kind = "service name"
	ContainerID Kind = "container ID"
	IfName      Kind = "interface name"
	Protocol    Kind = "protocol"
	Scheduler   Kind = "scheduler"
	Forward     Kind = "forwarding method"
	Weight      Kind = "weight"
	Rate        Kind = "rate"
	Address     Kind = "service address"
	Publish     Kind = "published port"
	MAC         Kind = "MAC"
)

// Case is one input and its verdict.
type Case struct {
	Kind  Kind
	Value string
	Valid bool
}

// Cases is the table. Schedulers and forwarding methods list only those
// every backend supports or none knows: what a backend lacks (lc on
// nftables) is that backend's business, tested with it. An empty protocol,
// scheduler or forwarding method means the default to the controller and
// cannot be given on the command line, so it is not here; nor is an empty
// interface name, which means "the first free ethN" to both.
var Cases = []Case{
	{NetworkName, "sandbox", true},
	{NetworkName, "a", true},
	{NetworkName, "web-00.net_1", true},
	{NetworkName, "9lives", true},
	{NetworkName, strings.Repeat("n", 63), true},
	{NetworkName, strings.Repeat("n", 64), false},
	{NetworkName, "", false},
	{NetworkName, "-x", false},
	{NetworkName, "_x", false},
	{NetworkName, ".x", false},
	{NetworkName, "a/b", false},
	{NetworkName, "..", false},
	{NetworkName, "a b", false},
	{NetworkName, "a:b", false},
	{NetworkName, "é", false},

	{ServiceName, "web", true},
	{ServiceName, "web-00.svc_1", true},
	{ServiceName, strings.Repeat("s", 63), true},
	{ServiceName, strings.Repeat("s", 64), false},
	{ServiceName, strings.Repeat("s", 253), false},
	{ServiceName, "", false},
	{ServiceName, "-web", false},
	{ServiceName, "_web", false},
	{ServiceName, "a/b", false},
	{ServiceName, "a b", false},

	// runc's rule: letters, digits and _+.- (its \w includes '_'), not
	// "." or "..".
	{ContainerID, "web-00", true},
	{ContainerID, "_build", true},
	{ContainerID, "-x", true},
	{ContainerID, "a..b", true},
	{ContainerID, "a+b", true},
	{ContainerID, ".hidden", true},
	{ContainerID, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", true},
	{ContainerID, strings.Repeat("c", 1024), true},
	{ContainerID, strings.Repeat("c", 1025), false},
	{ContainerID, "", false},
	{ContainerID, ".", false},
	{ContainerID, "..", false},
	{ContainerID, "a/b", false},
	{ContainerID, "a b", false},
	{ContainerID, "a:b", false},
	{ContainerID, "é", false},

	{IfName, "eth0", true},
	{IfName, "net1", true},
	{IfName, "a", true},
	{IfName, strings.Repeat("i", 15), true},
	{IfName, strings.Repeat("i", 16), false},
	{IfName, ".", false},
	{IfName, "..", false},
	{IfName, "a/b", false},
	{IfName, "a:b", false},
	{IfName, "a b", false},
	{IfName, "é", false},

	{Protocol, "tcp", true},
	{Protocol, "udp", true},
	{Protocol, "sctp", true},
	{Protocol, "TCP", false},
	{Protocol, "icmp", false},

	{Scheduler, "rr", true},
	{Scheduler, "wrr", true},
	{Scheduler, "sh", true},
	{Scheduler, "RR", false},
	{Scheduler, "fifo", false},

	{Forward, "nat", true},
	{Forward, "NAT", false},
	{Forward, "masq", false},

	{Weight, "1", true},
	{Weight, "100", true},
	{Weight, "65535", true},
	{Weight, "0", false},
	{Weight, "-1", false},
	{Weight, "65536", false},

	// A plain number is kbit/s. HTB cannot shape below one byte per second.
	{Rate, "5000", true},
	{Rate, "8bit", true},
	{Rate, "1.5mbit", true},
	{Rate, "10gbit", true},
	{Rate, "7bit", false},
	{Rate, "0.001", false},
	{Rate, "0", false},
	{Rate, "-5", false},
	{Rate, "5 furlongs", false},
	{Rate, "", false},

	{Address, "10.250.0.1:80", true},
	{Address, "[fd00:250::1]:8080", true},
	{Address, "10.250.0.1", false},
	{Address, "10.250.0.1:0", false},
	{Address, "10.250.0.1:65536", false},
	{Address, "0.0.0.0:80", false},
	{Address, "224.0.0.1:80", false},
	{Address, "localhost:80", false},
	{Address, "", false},

	// podman's --publish; ports 1-65535, ranges of equal length.
	{Publish, "18080:80", true},
	{Publish, "127.0.0.1:18081:80", true},
	{Publish, "[fd00:250::1]:18082:80/udp", true},
	{Publish, "18083-18085:80-82", true},
	{Publish, "0.0.0.0:18086:80/sctp", true},
	{Publish, "0:80", false},
	{Publish, "18087:0", false},
	{Publish, "65536:80", false},
	{Publish, "8000-8010:80-85", false},
	{Publish, "8010-8000:90-80", false},
	{Publish, "18088:80/icmp", false},
	{Publish, "18088:80/TCP", false},
	{Publish, "[::1]:18089:80", false},
	{Publish, "localhost:18089:80", false},
	{Publish, "224.0.0.1:18089:80", false},
	{Publish, "18089", false},
	{Publish, "10.250.0.1:18089", false},
	{Publish, "", false},

	// A container's MAC: six bytes, unicast, not all zero.
	{MAC, "02:42:ac:11:00:02", true},
	{MAC, "02-42-AC-11-00-03", true},
	{MAC, "01:00:5e:00:00:01", false},
	{MAC, "ff:ff:ff:ff:ff:ff", false},
	{MAC, "00:00:00:00:00:00", false},
	{MAC, "02:42:ac:11:00", false},
	{MAC, "02:42:ac:11:00:02:03:04", false},
	{MAC, "zz:42:ac:11:00:02", false},
	{MAC, "", false},
}

// Of returns the cases of the given kinds.
func Of(kinds ...Kind) []Case {
	var out []Case
	for _, c := range Cases {
		for _, k := range kinds {
			if c.Kind == k {
				out = append(out, c)
			}
		}
	}
	return out
}

// Name is a short subtest name for a case.
func (c Case) Name() string {
	v := c.Value
	if len(v) > 20 {
		v = v[:8] + "..." + v[len(v)-4:] + "(" + itoa(len(c.Value)) + ")"
	}
	if v == "" {
		v = "empty"
	}
	verdict := "refused"
	if c.Valid {
		verdict = "accepted"
	}
	return strings.ReplaceAll(string(c.Kind), " ", "_") + "/" + v + "/" + verdict
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}
