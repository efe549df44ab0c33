package nftables

import (
	"sync/atomic"
	"time"

	"github.com/google/nftables"
)

// hairpinTimeout lets interface pairs of deleted devices age out.
const hairpinTimeout = time.Hour

// affinitySize bounds the clients a persistent service remembers; beyond
// it, new clients are still balanced, just not remembered.
const affinitySize = 1 << 18

// setIDs numbers sets within a batch. We assign IDs ourselves because
// google/nftables' own counter is a global without a lock.
var setIDs atomic.Uint32

func newSetID() uint32 { return setIDs.Add(1) }

func addrType(v6 bool) nftables.SetDatatype {
	if v6 {
		return nftables.TypeIP6Addr
	}
	return nftables.TypeIPAddr
}

func concat(t ...nftables.SetDatatype) nftables.SetDatatype { return nftables.MustConcatSetType(t...) }

// tupleType is a VIP tuple: addr . inet_proto . inet_service.
func tupleType(v6 bool) nftables.SetDatatype {
	return concat(addrType(v6), nftables.TypeInetProto, nftables.TypeInetService)
}

// targetType is addr . inet_service.
func targetType(v6 bool) nftables.SetDatatype {
	return concat(addrType(v6), nftables.TypeInetService)
}

// tableSets are the table-wide sets of one family, in the order the table
// creates them (first in the kernel's list, found fastest).
func tableSets(v6 bool) []*nftables.Set {
	t := table()
	return []*nftables.Set{
		{Table: t, Name: servicesMap(v6), IsMap: true, Concatenation: true,
			KeyType: tupleType(v6), DataType: nftables.TypeVerdict},
		{Table: t, Name: flowsSet(v6), Counter: true, Concatenation: true, KeyType: tupleType(v6)},
		{Table: t, Name: vipsSet(v6), Concatenation: true, KeyType: tupleType(v6)},
		{Table: t, Name: targetsMap(v6), IsMap: true, Concatenation: true,
			KeyType:  concat(addrType(v6), nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark),
			DataType: concat(addrType(v6), nftables.TypeInetService, nftables.TypeMark)},
		{Table: t, Name: tbytesSet(v6), Counter: true, Concatenation: true, KeyType: pairType(v6)},
		{Table: t, Name: tconnsSet(v6), Counter: true, Concatenation: true, KeyType: pairType(v6)},
		{Table: t, Name: stickyMap(v6), IsMap: true, Concatenation: true,
			KeyType: tupleType(v6), DataType: nftables.TypeVerdict},
	}
}

// slotMaps are the shards of the slots map of one family.
func slotMaps(v6 bool) []*nftables.Set {
	out := make([]*nftables.Set, slotShards)
	for i := range out {
		out[i] = &nftables.Set{Table: table(), Name: slotsMap(v6, uint32(i)), IsMap: true, Concatenation: true,
			KeyType:  concat(addrType(v6), nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark),
			DataType: targetType(v6)}
	}
	return out
}

// pairType is a VIP tuple . target.
func pairType(v6 bool) nftables.SetDatatype {
	a := addrType(v6)
	return concat(a, nftables.TypeInetProto, nftables.TypeInetService, a, nftables.TypeInetService)
}

func hairpinSetDef() *nftables.Set {
	return &nftables.Set{Table: table(), Name: setHairpinIf, Dynamic: true,
		HasTimeout: true, Timeout: hairpinTimeout, Size: 65536, Concatenation: true,
		KeyType: concat(nftables.TypeIFIndex, nftables.TypeIFIndex)}
}

// affinityMapDef maps a persistent service's clients to their targets;
// each client's entry lives for the persistence after its last new
// connection.
func affinityMapDef(name string, v6 bool, timeout time.Duration) *nftables.Set {
	return &nftables.Set{Table: table(), Name: affinityMap(name), IsMap: true, Dynamic: true,
		HasTimeout: true, Timeout: timeout, Size: affinitySize,
		KeyType: addrType(v6), DataType: targetType(v6)}
}

// ref names an existing set: element changes need only table and name.
func ref(name string) *nftables.Set { return &nftables.Set{Table: table(), Name: name} }
