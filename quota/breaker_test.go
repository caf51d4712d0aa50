package quota

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tenantquota/caddy-tenant-quota/internal/testclock"
)

func TestBreaker(t *testing.T) {
	t.Parallel()
	clock := testclock.At(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	b := NewBreaker(BreakerOptions{Failures: 3, Cooldown: time.Second, Clock: clock})
	down := errors.New("connection refused")
	calls := 0
	fail := func() error { calls++; return down }
	ok := func() error { calls++; return nil }
	notFound := func() error { calls++; return fmt.Errorf("user: %w", ErrNotFound) }

	steps := []struct {
		name      string
		call      func() error
		advance   time.Duration
		wantErr   error
		wantCalls int
		wantOpen  bool
	}{
		{"a failure", fail, 0, ErrUnavailable, 1, false},
		{"a domain answer resets the count", notFound, 0, ErrNotFound, 2, false},
		{"failure 1", fail, 0, ErrUnavailable, 3, false},
		{"failure 2", fail, 0, ErrUnavailable, 4, false},
		{"failure 3 opens", fail, 0, ErrUnavailable, 5, true},
		{"open: the store is not called", ok, 0, ErrUnavailable, 5, true},
		{"still open before the cooldown", ok, 999 * time.Millisecond, ErrUnavailable, 5, true},
		{"a failed probe after the cooldown reopens", fail, time.Millisecond, ErrUnavailable, 6, true},
		{"open again", ok, 0, ErrUnavailable, 6, true},
		{"a good probe closes", ok, time.Second, nil, 7, false},
		{"closed", ok, 0, nil, 8, false},
	}
	for _, st := range steps {
		clock.Add(st.advance)
		err := b.Do(st.call)
		if st.wantErr == nil && err != nil || st.wantErr != nil && !errors.Is(err, st.wantErr) {
			t.Fatalf("%s: err %v, want %v", st.name, err, st.wantErr)
		}
		if calls != st.wantCalls || b.Open() != st.wantOpen {
			t.Fatalf("%s: %d calls, open=%v; want %d, %v", st.name, calls, b.Open(), st.wantCalls, st.wantOpen)
		}
	}
	if err := b.Do(func() error { return context.Canceled }); errors.Is(err, ErrUnavailable) {
		t.Fatalf("a caller's own cancellation is not a store failure: %v", err)
	}
}

func TestLocalAllowance(t *testing.T) {
	t.Parallel()
	a := NewLocalAllowance(2, Minute)
	now := time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC)
	for i, want := range []bool{true, true, false} {
		if got := a.Take("u", now); got != want {
			t.Fatalf("take %d: %v", i, got)
		}
	}
	if !a.Take("v", now) {
		t.Fatal("allowances are per user")
	}
	if !a.Take("u", now.Add(time.Minute)) {
		t.Fatal("a new window brings a new allowance")
	}
}
