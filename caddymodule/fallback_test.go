package caddymodule

import (
	"context"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// provisionFallback provisions an app with on_store_error allow limit per
// per, as a config load does; it is cleaned up when t ends, or by calling
// the returned cleanup (a later config took over).
func provisionFallback(t *testing.T, limit int64, per string) (*App, func()) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	a := &App{OnStoreError: StoreErrorAllow, FallbackLimit: limit, FallbackPer: per}
	if err := a.Provision(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := false
	cleanup := func() {
		if !done {
			done = true
			if err := a.Cleanup(); err != nil {
				t.Errorf("Cleanup: %v", err)
			}
			cancel()
		}
	}
	t.Cleanup(cleanup)
	return a, cleanup
}

// takeN makes n admissions of user under a store outage and returns how
// many were let through.
func takeN(a *App, user string, n int) int {
	got := 0
	for range n {
		if a.admitOnStoreError(user) {
			got++
		}
	}
	return got
}

// TestFallbackAllowanceSurvivesReload: a reload with the same
// on_store_error allowance carries on with what the previous config let
// through (300 + 300 in one minute is not 300 per minute); a changed
// allowance starts afresh; the last config to let go drops it.
func TestFallbackAllowanceSurvivesReload(t *testing.T) {
	for _, tt := range []struct {
		name        string
		limit       int64
		per         string
		wantAfter   int // admissions of 5 the reloaded config lets through
		description string
	}{
		{"same config", 5, "minute", 2, "carries on: 3 of 5 taken before the reload"},
		{"another limit", 6, "minute", 5, "a new allowance"},
		{"another period", 5, "hour", 5, "a new allowance"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			old, cleanupOld := provisionFallback(t, 5, "minute")
			if got := takeN(old, "u1", 3); got != 3 {
				t.Fatalf("before the reload: %d of 3 let through", got)
			}
			reloaded, _ := provisionFallback(t, tt.limit, tt.per)
			cleanupOld() // Caddy cleans the old config up after the new one started
			if got := takeN(reloaded, "u1", 5); got != tt.wantAfter {
				t.Fatalf("after the reload: %d of 5 let through, want %d (%s)", got, tt.wantAfter, tt.description)
			}
			if got := takeN(reloaded, "u2", 5); got != 5 {
				t.Fatalf("another user: %d of 5 let through", got)
			}
		})
	}
	// Every config above let go: a new one starts afresh.
	a, _ := provisionFallback(t, 5, "minute")
	if got := takeN(a, "u1", 5); got != 5 {
		t.Fatalf("after every config let go: %d of 5 let through", got)
	}
}
