package quota

// Amounts: every amount a store sees is within ±MaxLimit, and every counter
// stays within [0, MaxCounter], whatever a tenant or a backend sends. The
// helpers below saturate instead of wrapping.

// MaxCounter is the largest value a counter takes; it keeps counters exact
// in the float arithmetic of Redis' Lua (below 2^53).
const MaxCounter = 1 << 52

// clampAmount bounds a non-negative amount to [0, MaxLimit].
func clampAmount(n int64) int64 { return min(max(n, 0), MaxLimit) }

// clampSigned bounds an amount to [-MaxLimit, MaxLimit].
func clampSigned(n int64) int64 { return min(max(n, -MaxLimit), MaxLimit) }

// satAdd adds two non-negative amounts, saturating at MaxLimit.
func satAdd(a, b int64) int64 { return min(clampAmount(a)+clampAmount(b), MaxLimit) }

// satMul multiplies two non-negative amounts, saturating at MaxLimit.
func satMul(a, b int64) int64 {
	a, b = clampAmount(a), clampAmount(b)
	if a != 0 && b > MaxLimit/a {
		return MaxLimit
	}
	return a * b
}
