// Package testclock is the one clock the tests move by hand: a quota.Clock
// (and a boltstore clock) whose time changes only when a test says so,
// safe for concurrent use.
package testclock

import (
	"sync/atomic"
	"time"
)

// Clock is a clock at a time a test sets.
type Clock struct{ now atomic.Pointer[time.Time] }

// At returns a clock at t.
func At(t time.Time) *Clock {
	c := &Clock{}
	c.Set(t)
	return c
}

// Now returns the clock's time (the zero time before any Set).
func (c *Clock) Now() time.Time {
	if t := c.now.Load(); t != nil {
		return *t
	}
	return time.Time{}
}

// Set moves the clock to t.
func (c *Clock) Set(t time.Time) { c.now.Store(&t) }

// Add moves the clock by d.
func (c *Clock) Add(d time.Duration) { c.Set(c.Now().Add(d)) }
