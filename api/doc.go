// Package api is circuit's vocabulary: the domain types every layer speaks
// (networks, peers, QoS policies, load-balanced services), the sentinel
// errors they wrap, and every rule that judges user input (names, container
// IDs, interface names, rates, durations, protocols, schedulers, weights,
// addresses), each written once.
//
// It imports nothing of circuit's. The CLI, the controllers (local and
// Fake), the datastores and the kernel libraries under pkg/ all call the
// same rule, so they cannot disagree about what is valid.
//
// The JSON tags of the domain types are the CLI's `--format json` schema
// (docs/cli-json.md). They are not the datastore's: ds/record has its own
// versioned records.
//
// A peer is one container interface on one network (the CNI spec calls it
// an attachment; the host side of a veth is the peer's host interface).
package api
