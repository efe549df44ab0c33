package legacy

import "fmt"

// slotRange gives target Target the numgen/jhash values First..Last.
type slotRange struct {
	First, Last uint32
	Target      int
}

// maxSlots bounds the modulus so the end marker (mod) fits in 32 bits.
const maxSlots = 1 << 31

// slots splits 0..mod-1 into one contiguous range per target, sized by
// weight after dividing out the weights' gcd (weights 3:1 -> mod 4, target 0
// gets 0-2 and target 1 gets 3). Weights must be positive.
func slots(weights []int) (mod uint32, ranges []slotRange, err error) {
	g := 0
	for _, w := range weights {
		if w <= 0 {
			return 0, nil, fmt.Errorf("weight %d is not positive", w)
		}
		g = gcd(g, w)
	}
	var next uint64
	for i, w := range weights {
		n := uint64(w / g)
		if next+n > maxSlots {
			return 0, nil, fmt.Errorf("total weight exceeds %d", maxSlots)
		}
		ranges = append(ranges, slotRange{First: uint32(next), Last: uint32(next + n - 1), Target: i})
		next += n
	}
	return uint32(next), ranges, nil
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
