package quota

import (
	"sync"
	"time"
)

// LocalAllowance is a per-node, in-memory allowance per user and window,
// used to keep admitting a bounded number of requests while the store is
// unreachable. It is safe for concurrent use; its memory is bounded by the
// users seen in the current window.
type LocalAllowance struct {
	limit int64
	per   Period

	mu     sync.Mutex
	start  time.Time
	counts map[string]int64
}

// NewLocalAllowance allows limit requests per user per window of per.
func NewLocalAllowance(limit int64, per Period) *LocalAllowance {
	return &LocalAllowance{limit: limit, per: per, counts: map[string]int64{}}
}

// Take uses one unit of userID's allowance at now, if any is left.
func (a *LocalAllowance) Take(userID string, now time.Time) bool {
	start, _ := a.per.Window(now)
	a.mu.Lock()
	defer a.mu.Unlock()
	if !start.Equal(a.start) {
		a.start, a.counts = start, map[string]int64{}
	}
	if a.counts[userID] >= a.limit {
		return false
	}
	a.counts[userID]++
	return true
}
