package quota

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrUnavailable: the store failed or did not answer in time, or the
// circuit breaker is open after repeated failures.
var ErrUnavailable = errors.New("quota store unavailable")

// BreakerOptions configure a circuit breaker.
type BreakerOptions struct {
	// Failures is how many consecutive store failures open the breaker
	// (default 5).
	Failures int
	// Cooldown is how long an open breaker refuses calls before it lets
	// one probe through (default 1s).
	Cooldown time.Duration
	// Clock defaults to the system clock.
	Clock Clock
}

// Breaker stops callers from waiting on a store that is down: after
// Failures consecutive failures it fails every call at once for Cooldown,
// then lets a single probe through; a success closes it again. It is safe
// for concurrent use.
type Breaker struct {
	opts BreakerOptions

	mu        sync.Mutex
	failures  int
	openUntil time.Time
	probing   bool
}

// NewBreaker returns a closed breaker.
func NewBreaker(opts BreakerOptions) *Breaker {
	if opts.Failures <= 0 {
		opts.Failures = 5
	}
	if opts.Cooldown <= 0 {
		opts.Cooldown = time.Second
	}
	if opts.Clock == nil {
		opts.Clock = SystemClock{}
	}
	return &Breaker{opts: opts}
}

// Do runs call unless the breaker is open, and records its outcome.
// Domain outcomes (not found, conflict, invalid input) count as successes:
// the store answered.
func (b *Breaker) Do(call func() error) error {
	if !b.allow() {
		return fmt.Errorf("circuit open after repeated store failures: %w", ErrUnavailable)
	}
	err := call()
	b.record(err)
	if err != nil && isStoreFailure(err) && !errors.Is(err, ErrUnavailable) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}

// Open reports whether the breaker is refusing calls.
func (b *Breaker) Open() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.failures >= b.opts.Failures && b.opts.Clock.Now().Before(b.openUntil)
}

func (b *Breaker) allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failures < b.opts.Failures {
		return true
	}
	if b.opts.Clock.Now().Before(b.openUntil) || b.probing {
		return false
	}
	b.probing = true
	return true
}

func (b *Breaker) record(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.probing = false
	if err == nil || !isStoreFailure(err) {
		b.failures = 0
		return
	}
	b.failures++
	if b.failures >= b.opts.Failures {
		b.openUntil = b.opts.Clock.Now().Add(b.opts.Cooldown)
	}
}

// isStoreFailure tells infrastructure failures from domain answers. A
// caller that gave up (its own context cancelled) is not the store's fault.
func isStoreFailure(err error) bool {
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrConflict), errors.Is(err, ErrInvalid),
		errors.Is(err, context.Canceled):
		return false
	}
	return true
}
