// Package etcd is a ds.Datastore on etcd v3, for circuit-agent: circuit's
// state shared by the hosts of a cluster. It stores the same versioned
// records (package record) as ds/bolt and keeps the same contract
// (ds/dstest), through one optimistic etcd transaction per Update.
//
// The circuit binary never links this package (internal/archtest checks
// it); only circuit-agent will.
//
// # Layout
//
// Every key is under a prefix (Config.Prefix, "/circuit/v1" by default), so
// clusters or tests can share one etcd:
//
//	<prefix>/meta/schema                              "2": decimal schema version
//	<prefix>/meta/commit                              token of the last commit (see below)
//	<prefix>/meta/lock                                present: writers wait (see below)
//	<prefix>/networks/<name>                          record.Network (never its peers)
//	<prefix>/peers/<network>/<containerID>/<ifname>   record.Peer
//	<prefix>/services/<name>                          record.Service
//
// Every name is judged by circuit's rule for its kind (package api) before
// it becomes part of a key, so none holds a "/": a scan of a directory
// always ends its prefix with "/", and network "a" never matches "ab", nor
// container "c1" "c10". etcd returns keys in byte order, which sorts
// networks and services by name; peers are sorted by (network, container
// ID, interface) after reading, since '/' sorts after some bytes a name may
// hold ('-', '.', '+').
//
// # Transactions
//
// View reads the meta keys once, linearizably, and reads everything else at
// that revision (WithRev): a consistent snapshot of committed state.
//
// Update is optimistic. It reads at a snapshot revision as View does and
// buffers fn's writes in the transaction, which reads its own writes. Then
// one etcd Txn commits them, guarded by the ModRevision of meta/commit as
// the snapshot saw it; the same Txn puts a fresh token in meta/commit. Every
// Update bumps that one key, so any commit since the snapshot fails the
// guard: writers are serialized as bbolt's file lock serializes them, and
// what fn read is still true when its writes land. On a failed guard fn
// runs again on a new snapshot, until the Store's timeout; then Update fails
// with api.ErrBusy. fn's own error is returned as is and nothing is
// written. A read-only Update commits nothing.
//
// DeleteNetwork deletes its peers with one range delete. etcd refuses a Txn
// whose puts overlap its deletes, so a peer written again after its network
// was deleted in the same Update splits the range around it. An Update
// whose commit needs more operations than one etcd Txn allows
// (Config.MaxTxnOps, etcd's --max-txn-ops) is refused whole, never split.
//
// If etcd does not answer a commit, it may still have applied it. Update
// then looks for its token in meta/commit: found, the commit landed;
// otherwise it reports that the outcome is unknown and never runs fn again,
// which could apply the change twice.
//
// meta/lock holds writers off: while it exists no Update commits (its Txn
// checks the key is absent) and Updates wait for it, up to their timeout.
// Maintenance that spans more than one Txn takes it, best with a lease so
// that a crash releases it; its value names the holder in ErrBusy errors.
//
// # Schema versions
//
// meta/schema is written by the first Update of an empty prefix. A store
// whose schema is newer than this code knows is refused by Open, Update and
// View; every commit checks the schema key did not change since its
// snapshot.
//
// # Bounds
//
// Every etcd call of a transaction runs under the Store's timeout
// (Config.Timeout). An etcd that does not answer within it fails the
// transaction with an error matching api.ErrBusy that names the endpoints,
// never the credentials.
package etcd
