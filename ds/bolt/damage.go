package bolt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"runtime/debug"
	"strings"
)

// A damaged circuit.db must fail with one line that names it, never a
// panic: circuit runs inside runc's hooks, where a stack trace would land
// in runc's error. bbolt panics on pages it cannot make sense of, and a
// file shorter than its meta page says faults on the memory map (SIGBUS),
// which recover alone does not catch. So Open checks the size against the
// meta page (one small read; not a full consistency check, which would
// cost every container start), and every transaction recovers from bbolt's
// panics with faults turned into panics.

// damaged is the one line a damaged file gets.
func damaged(path, what string) error {
	return fmt.Errorf("datastore %s is damaged (%s): restore it from a backup, or move it aside to start an empty one (circuit then forgets the containers it connected: disconnect or stop them first if you can)",
		path, what)
}

// guard turns a panic inside bbolt (including a memory fault on its map)
// into *errp. Defer its result: `defer guard(path, &err)()`.
func guard(path string, errp *error) func() {
	old := debug.SetPanicOnFault(true)
	return func() {
		debug.SetPanicOnFault(old)
		r := recover()
		if r == nil {
			return
		}
		if !strings.Contains(string(debug.Stack()), "go.etcd.io/bbolt") {
			panic(r) // not the file's fault: a bug, to be seen as one
		}
		*errp = damaged(path, fmt.Sprint(r))
	}
}

// bbolt's meta page: a 16-byte page header, then magic, version, page
// size, flags, root bucket (16), freelist, high-water page id, txid and a
// checksum of what comes before it.
const (
	pageHeader   = 16
	metaMagic    = 0xED0CDAED
	metaVersion  = 2
	metaLen      = 64
	metaChecksum = 56
)

type meta struct {
	pageSize uint32
	pgid     uint64 // pages in use, so the file holds at least pgid pages
	txid     uint64
}

// checkSize refuses a file whose valid meta pages (bbolt keeps two and
// uses the newer) say it is longer than it is, or that has none.
func checkSize(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() == 0 {
		return err // a size 0 file is being created
	}
	first, err := readMeta(f, 0)
	if err != nil {
		return damaged(path, err.Error())
	}
	var best *meta
	pageSize := int64(os.Getpagesize())
	if first != nil {
		best, pageSize = first, int64(first.pageSize)
	}
	if second, _ := readMeta(f, pageSize); second != nil && (best == nil || second.txid > best.txid) {
		best = second
	}
	if best == nil {
		return damaged(path, "no valid meta page")
	}
	if need := int64(best.pgid) * int64(best.pageSize); fi.Size() < need {
		return damaged(path, fmt.Sprintf("%d bytes, where its meta page needs %d", fi.Size(), need))
	}
	return nil
}

// readMeta reads the meta page at off: nil, nil if it is not valid.
func readMeta(f *os.File, off int64) (*meta, error) {
	b := make([]byte, pageHeader+metaLen)
	if _, err := f.ReadAt(b, off); err != nil {
		if errors.Is(err, io.EOF) && off > 0 {
			return nil, nil
		}
		if errors.Is(err, io.EOF) {
			return nil, errors.New("shorter than a meta page")
		}
		return nil, err
	}
	m := b[pageHeader:]
	le := binary.LittleEndian
	h := fnv.New64a()
	h.Write(m[:metaChecksum])
	if le.Uint32(m[0:]) != metaMagic || le.Uint32(m[4:]) != metaVersion || le.Uint64(m[metaChecksum:]) != h.Sum64() {
		return nil, nil
	}
	ps := le.Uint32(m[8:])
	if ps < 512 || ps > 1<<20 {
		return nil, nil
	}
	return &meta{pageSize: ps, pgid: le.Uint64(m[40:]), txid: le.Uint64(m[48:])}, nil
}
