package legacy

import (
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
)

// hairpinTimeout lets interface pairs of deleted devices age out.
const hairpinTimeout = time.Hour

// recentTimeout only has to span one packet's trip from the service chain
// (prerouting) to the postrouting chain.
const recentTimeout = time.Minute

// affinitySize bounds the clients remembered per target; beyond it, new
// clients are still balanced, just not remembered.
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

func tupleType(v6 bool) nftables.SetDatatype {
	return nftables.MustConcatSetType(addrType(v6), nftables.TypeInetProto, nftables.TypeInetService)
}

func targetType(v6 bool) nftables.SetDatatype {
	return nftables.MustConcatSetType(addrType(v6), nftables.TypeInetService)
}

func servicesSetDef(v6 bool) *nftables.Set {
	return &nftables.Set{Table: table(), Name: servicesMap(v6), ID: newSetID(), IsMap: true,
		Concatenation: true, KeyType: tupleType(v6), DataType: nftables.TypeVerdict}
}

func flowsSetDef(v6 bool) *nftables.Set {
	return &nftables.Set{Table: table(), Name: flowsSet(v6), ID: newSetID(), Counter: true,
		Concatenation: true, KeyType: tupleType(v6)}
}

func hairpinSetDef() *nftables.Set {
	return &nftables.Set{Table: table(), Name: setHairpinIf, ID: newSetID(), Dynamic: true,
		HasTimeout: true, Timeout: hairpinTimeout, Size: 65536, Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIFIndex, nftables.TypeIFIndex)}
}

// recentSetDef holds targets that service chains picked recently.
func recentSetDef(v6 bool) *nftables.Set {
	return &nftables.Set{Table: table(), Name: recentSet(v6), ID: newSetID(), Dynamic: true,
		HasTimeout: true, Timeout: recentTimeout, Size: 65536, Concatenation: true, KeyType: targetType(v6)}
}

func targetSetDef(name string, v6 bool) *nftables.Set {
	return &nftables.Set{Table: table(), Name: targetSet(name), ID: newSetID(),
		Concatenation: true, KeyType: targetType(v6)}
}

func affinitySetDef(name string, t netip.AddrPort) *nftables.Set {
	return &nftables.Set{Table: table(), Name: affinitySet(name, t), ID: newSetID(),
		Dynamic: true, HasTimeout: true, Size: affinitySize, KeyType: addrType(t.Addr().Is6())}
}

// slotMapDef is the anonymous interval vmap slot -> goto target chain.
func slotMapDef() *nftables.Set {
	return &nftables.Set{Table: table(), Name: "__map%d", ID: newSetID(), Anonymous: true, Constant: true,
		IsMap: true, Interval: true, KeyType: nftables.TypeInteger, DataType: nftables.TypeVerdict,
		KeyByteOrder: binaryutil.BigEndian}
}
