// Package bolt is circuit's default datastore: one bbolt file,
// <stateDir>/circuit.db, opened for each transaction and closed right after.
//
// bbolt holds an flock on its file for as long as a handle is open:
// exclusive for read-write handles, shared for read-only ones. circuit calls
// CNI plugins between transactions and many circuit processes (the runc hooks
// of many containers) run at once, so a Store never keeps the file open:
// Update opens it read-write, runs one transaction and closes it; View does
// the same read-only, so readers share the lock. Waiting for the lock is
// bounded by WithTimeout (10s by default); past it a transaction fails with
// an error wrapping api.ErrBusy.
//
// # Layout
//
// Buckets end in "/"; every other name is a key.
//
//	v1/
//	  meta/
//	    schema -> "2"                  decimal schema version
//	  networks/
//	    <name>/
//	      config -> record.Network (never its peers)
//	      peers/
//	        <containerID>/
//	          <ifname> -> record.Peer
//	  services/
//	    <name> -> record.Service
//
// Values are package record's versioned records, not the CLI's JSON.
// Keys are the objects' names, so bbolt's byte order gives sorted lists for
// free. Every key is judged by circuit's rule for its kind (package api),
// as the CLI and the controllers judge it.
//
// Schema 1 stored the CLI's JSON of the day; migration 2 rewrote every
// value as a record (schema.go, tested on a file today's binary made).
//
// # Schema versions
//
// v1/meta/schema is the authority; later layouts stay under v1/ and bump it,
// as containerd's metadata store does. The first read-write transaction on a
// file writes it: Open performs one on a new or older file, running the
// migrations (schema.go) in order inside that transaction, so a crash leaves
// either the old schema or the new one. A file whose schema is newer than
// this code knows is refused by Open, Update and View alike.
//
// Open creates the file, so View can always take the shared lock. If the
// file disappears afterwards, View sees an empty store and does not recreate
// it; the next Update does.
//
// Transactions of one Store do not nest: an Update or View inside another's
// fn waits for a lock its caller holds and fails with ErrBusy.
package bolt
