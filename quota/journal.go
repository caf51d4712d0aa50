package quota

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"
)

// DefaultJournalSize is how many unsettled admissions a Service keeps by
// default while the store is unreachable.
const DefaultJournalSize = 100_000

// journal holds settlements (Store.Resolve calls) that could not be made
// yet and replays them, in order, until the store takes them. It lives in
// memory: a crash of the node loses what it holds.
type journal struct {
	store Store
	log   *zap.Logger
	size  int
	clock Clock

	mu      sync.Mutex
	entries []resolution
	dropped int
	// loggedAt and unlogged rate-limit the drop line: an outage that
	// outlasts the journal drops one entry per request.
	loggedAt time.Time
	unlogged int
	wake     chan struct{}
}

// dropLogEvery is the least time between two lines about dropped entries.
const dropLogEvery = time.Second

// Pending is an admission or settlement whose outcome is unknown.
type Pending struct {
	userID, requestID string
	charges           []Charge
}

type resolution struct {
	p      Pending
	apply  bool
	settle bool // a Settle, not a Resolve
}

func newJournal(store Store, log *zap.Logger, size int, clock Clock) *journal {
	if size <= 0 {
		size = DefaultJournalSize
	}
	return &journal{store: store, log: log, size: size, clock: clock, wake: make(chan struct{}, 1)}
}

func (j *journal) add(r resolution) {
	j.mu.Lock()
	if len(j.entries) >= j.size {
		// Bounded: the oldest settlement is lost, and said so.
		j.entries = j.entries[1:]
		j.dropped++
		j.unlogged++
		if now := j.clock.Now(); now.Sub(j.loggedAt) >= dropLogEvery {
			j.log.Error("settlement journal full; dropped the oldest unsettled admissions",
				zap.Int("size", j.size), zap.Int("dropped", j.unlogged), zap.Int("dropped_total", j.dropped))
			j.loggedAt, j.unlogged = now, 0
		}
	}
	j.entries = append(j.entries, r)
	j.mu.Unlock()
	select {
	case j.wake <- struct{}{}:
	default:
	}
}

// len reports how many settlements wait.
func (j *journal) len() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.entries)
}

// replay settles entries until the journal is empty or the store fails;
// it reports whether it emptied the journal.
func (j *journal) replay(timeout time.Duration) bool {
	for {
		j.mu.Lock()
		if len(j.entries) == 0 {
			j.mu.Unlock()
			return true
		}
		r := j.entries[0]
		j.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		var err error
		if r.settle {
			err = j.store.Settle(ctx, r.p.userID, r.p.requestID, r.p.charges)
		} else {
			err = j.store.Resolve(ctx, r.p.userID, r.p.requestID, r.p.charges, r.apply)
		}
		cancel()
		if err != nil && !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrNotFound) {
			return false
		}
		if err != nil {
			j.log.Error("dropping a settlement the store refuses", zap.String("user_id", r.p.userID), zap.Error(err))
		}
		j.mu.Lock()
		j.entries = j.entries[1:]
		j.mu.Unlock()
	}
}

// run replays whenever woken, backing off while the store is down.
func (j *journal) run(stop <-chan struct{}) {
	backoff := 100 * time.Millisecond
	for {
		select {
		case <-stop:
			return
		case <-j.wake:
		case <-time.After(backoff):
		}
		if j.replay(time.Second) {
			backoff = 100 * time.Millisecond
			continue
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}
