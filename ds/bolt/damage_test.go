package bolt

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/ds/dstest"
)

var (
	goodOnce sync.Once
	goodDB   []byte
)

// goodFile is a valid circuit.db with a few records, made once.
func goodFile(t testing.TB) []byte {
	goodOnce.Do(func() {
		dir, err := os.MkdirTemp("", "circuit-good-db")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		s, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		err = s.Update(context.Background(), func(tx ds.Tx) error {
			if err := tx.PutNetwork(dstest.Network("net")); err != nil {
				return err
			}
			if err := tx.PutPeer(dstest.Peer("net", "c1", "eth0")); err != nil {
				return err
			}
			return tx.PutService(dstest.Service("web"))
		})
		if err != nil {
			t.Fatal(err)
		}
		goodDB, err = os.ReadFile(s.Path())
		if err != nil {
			t.Fatal(err)
		}
	})
	return goodDB
}

// useDamaged opens a damaged copy and reads and writes through it: any
// outcome but a panic (or a fault) is fine, and a failure names the file.
func useDamaged(t *testing.T, b []byte) {
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	check := func(what string, err error) {
		if err != nil && !strings.Contains(err.Error(), path) && !errors.Is(err, context.Canceled) {
			t.Errorf("%s on a damaged file: %v: the error does not name the file", what, err)
		}
	}
	s, err := Open(dir)
	if err != nil {
		check("Open", err)
		return
	}
	check("View", s.View(context.Background(), func(tx ds.Tx) error {
		if _, err := tx.ListNetworks(); err != nil {
			return err
		}
		if _, err := tx.ListPeers(""); err != nil {
			return err
		}
		_, err := tx.ListServices()
		return err
	}))
	check("Update", s.Update(context.Background(), func(tx ds.Tx) error {
		return tx.PutNetwork(dstest.Network("other"))
	}))
}

func TestDamagedFiles(t *testing.T) {
	good := goodFile(t)
	flipped := func(from, to int) []byte {
		b := append([]byte(nil), good...)
		for i := from; i < to && i < len(b); i += 61 {
			b[i] ^= 0xa5
		}
		return b
	}
	for name, b := range map[string][]byte{
		"empty but not zero": {0},
		"one page":           good[:4096],
		"meta pages only":    good[:8192],
		"half":               good[:len(good)/2],
		"one byte short":     good[:len(good)-1],
		"meta flipped":       flipped(16, 80),
		"both metas flipped": append(flipped(16, 80)[:4096], flipped(4096+16, 4096+80)[4096:]...),
		"data flipped":       flipped(8192, len(good)),
	} {
		t.Run(name, func(t *testing.T) { useDamaged(t, b) })
	}
}

// FuzzOpenDamaged overwrites part of a valid file and cuts it short.
func FuzzOpenDamaged(f *testing.F) {
	f.Add(uint32(20), []byte{0xff, 0xff}, uint32(0))
	f.Add(uint32(9000), []byte("garbage"), uint32(0))
	f.Add(uint32(0), []byte{}, uint32(12000))
	f.Fuzz(func(t *testing.T, at uint32, patch []byte, cut uint32) {
		b := append([]byte(nil), goodFile(t)...)
		copy(b[int(at)%len(b):], patch)
		if cut != 0 {
			b = b[:int(cut)%(len(b)+1)]
		}
		useDamaged(t, b)
	})
}
