package quota_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/tenantquota/caddy-tenant-quota/internal/redistest"
	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// TestRefusalsAreCheap: a tenant at a full cap hammering the gateway is
// refused from memory, costing the store next to nothing; a change of its
// limits (a new user object) or a reset lets it through again at once.
func TestRefusalsAreCheap(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	store := openRedis(t, srv)
	n := newSliceNode(t, store, nil, true)
	p, secret := secretTenant(t, n.svc, 5)
	for i := range 5 {
		if !n.admit(t, p) {
			t.Fatalf("request %d refused under the cap", i)
		}
	}
	before := n.admits.Load()
	const hammer = 2000
	for range hammer {
		if n.admit(t, p) {
			t.Fatal("admitted over the cap")
		}
	}
	calls := n.admits.Load() - before
	t.Logf("%d refusals at a full cap cost %d store admissions", hammer, calls)
	if calls > 20 {
		t.Fatalf("%d refusals cost %d store admissions (want a handful: refused from memory)", hammer, calls)
	}
	// A reset changes the answer at once.
	if _, err := n.svc.ResetUsage(context.Background(), p.User.ID, nil); err != nil {
		t.Fatal(err)
	}
	if !n.admit(t, p) {
		t.Fatal("refused right after a reset")
	}
	// So does a raised limit (the principal is authenticated again).
	for n.admit(t, p) {
	}
	if _, err := n.svc.SetLimits(context.Background(), p.User.ID, quota.Limits{"messages": {{Limit: 100}}}); err != nil {
		t.Fatal(err)
	}
	if !n.admit(t, authenticate(t, n.svc, secret)) {
		t.Fatal("refused right after the limit was raised")
	}
}

// TestResetRecallsOtherNodesSlices: node B serves a busy tenant from
// slices; an operator resets the tenant's usage on node A and lowers its
// cap: what is served after the reset, on both nodes, stays within the new
// cap (before, B's give-back subtracted its slice from the zeroed counter).
func TestResetRecallsOtherNodesSlices(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	sa, sb := openRedis(t, srv), openRedis(t, srv)
	a, b := newSliceNode(t, sa, sa.Broadcaster(), false), newSliceNode(t, sb, sb.Broadcaster(), false)
	p, secret := secretTenant(t, a.svc, 100_000)
	pb := authenticate(t, b.svc, secret)
	b.burst(t, pb, 6000, 8) // B holds slices now
	if _, err := a.svc.ResetUsage(context.Background(), p.User.ID, nil); err != nil {
		t.Fatal(err)
	}
	const newCap = 2000
	if _, err := a.svc.SetLimits(context.Background(), p.User.ID, quota.Limits{"messages": {{Limit: newCap}}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return authenticate(t, b.svc, secret).User.Limits["messages"][0].Limit == newCap })
	served := a.burst(t, authenticate(t, a.svc, secret), 3000, 8)
	served += b.burst(t, authenticate(t, b.svc, secret), 3000, 8)
	if served > newCap {
		t.Fatalf("served %d after the reset against a cap of %d", served, newCap)
	}
}

func secretTenant(t *testing.T, svc *quota.Service, limit int64) (*quota.Principal, string) {
	t.Helper()
	ctx := context.Background()
	u, err := svc.CreateUser(ctx, quota.NewUser{Name: "R", Email: quota.NewID() + "@example.com", Limits: quota.Limits{"messages": {{Limit: limit}}}})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := svc.CreateToken(ctx, u.ID, quota.NewToken{})
	if err != nil {
		t.Fatal(err)
	}
	return authenticate(t, svc, tok.Secret), tok.Secret
}

func authenticate(t *testing.T, svc *quota.Service, secret string) *quota.Principal {
	t.Helper()
	p, err := svc.Authenticate(context.Background(), secret)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTokenRefusalsAreCheap: an LLM tenant at a full token cap is refused
// from memory too, in general terms (not the first request's).
func TestTokenRefusalsAreCheap(t *testing.T) {
	t.Parallel()
	n := newSliceNode(t, openRedis(t, redistest.Start(t)), nil, true)
	ctx := context.Background()
	u, err := n.svc.CreateUser(ctx, quota.NewUser{Name: "L", Email: "l@example.com", Limits: quota.Limits{"tokens": {{Limit: 0}}}})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := n.svc.CreateToken(ctx, u.ID, quota.NewToken{})
	if err != nil {
		t.Fatal(err)
	}
	p := authenticate(t, n.svc, tok.Secret)
	began := time.Now()
	for i := range 500 {
		before := n.admits.Load()
		_, err := n.svc.AdmitPrincipal(ctx, p, plan(t, quota.Route{}, quota.APIChat, `{"messages":[{"role":"user","content":"hi"}],"max_tokens":`+strconv.Itoa(10+i)+`}`), n.svc.Now())
		var le *quota.LimitError
		if !errors.As(err, &le) || le.State.Resource != "tokens" {
			t.Fatalf("request %d: %v", i, err)
		}
		// A refusal from memory is in general terms; one the store gave
		// (the first, or one after the remembered refusal lapsed on a busy
		// machine, bounded below) speaks of its own request.
		if fromMemory := n.admits.Load() == before; fromMemory && le.Request != "" {
			t.Fatalf("a remembered refusal speaks of another request: %q", le.Request)
		}
	}
	// A refusal is remembered for 250ms: on a machine slow enough that the
	// 500 take longer than a second, one store admission per 250ms more.
	if a, most := n.admits.Load(), max(5, 2+int64(time.Since(began)/(250*time.Millisecond))); a > most {
		t.Fatalf("500 refusals at a full token cap in %v cost %d store admissions (at most %d)", time.Since(began), a, most)
	}
}

// TestRefusalHerdAtExpiry: when a remembered refusal ends, one request
// asks the store again while the others keep being refused from memory,
// so a capped tenant on many connections costs the store about one
// script per refusalTTL, not one per connection.
func TestRefusalHerdAtExpiry(t *testing.T) {
	t.Parallel()
	n := newSliceNode(t, openRedis(t, redistest.Start(t)), nil, true)
	p, _ := secretTenant(t, n.svc, 1)
	if !n.admit(t, p) || n.admit(t, p) {
		t.Fatal("the cap of 1 does not hold")
	}
	before := n.admits.Load() // the refusal is remembered now
	const conns, per = 32, 400
	start := time.Now()
	done := make(chan bool, conns)
	for range conns {
		go func() {
			admitted := false
			for i := 0; i < per && time.Since(start) < 1200*time.Millisecond; i++ {
				if n.admit(t, p) {
					admitted = true
				}
				time.Sleep(time.Millisecond)
			}
			done <- admitted
		}()
	}
	for range conns {
		if <-done {
			t.Error("admitted over the cap")
		}
	}
	elapsed := time.Since(start)
	calls := n.admits.Load() - before
	// One probe per refusalTTL (250 ms), with room for a scheduler stall.
	limit := 2*int64(elapsed/(250*time.Millisecond)) + 4
	t.Logf("%d connections refused for %v cost %d store admissions", conns, elapsed.Round(time.Millisecond), calls)
	if calls > limit {
		t.Fatalf("%d store admissions in %v (want ≤ %d: one probe per expiry, the rest refused from memory)", calls, elapsed, limit)
	}
}
