package quota_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tenantquota/caddy-tenant-quota/internal/redistest"
	"github.com/tenantquota/caddy-tenant-quota/internal/testclock"
	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/boltstore"
	"github.com/tenantquota/caddy-tenant-quota/quota/redisstore"
)

// Headroom slices (headroom.go): a busy tenant is admitted from slices of
// its headroom, without a store call per request, and caps still hold
// exactly.

// sliceNode is one gateway's service over a shared store, counting its
// store admissions.
type sliceNode struct {
	svc    *quota.Service
	admits atomic.Int64
}

func newSliceNode(t *testing.T, store quota.Store, bc quota.Broadcaster, noSlices bool) *sliceNode {
	t.Helper()
	n := &sliceNode{}
	svc, err := quota.NewService(quota.Options{Store: store, Broadcaster: bc, NoSlices: noSlices,
		OnStoreCall: func(op string, _ time.Duration, _ error) {
			if op == quota.OpAdmit {
				n.admits.Add(1)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	n.svc = svc
	return n
}

// admit admits one plain request (one message) of p.
func (n *sliceNode) admit(t *testing.T, p *quota.Principal) bool {
	t.Helper()
	plan := (&quota.Route{}).Plan(quota.MeterUses{}, quota.TokenRequest{})
	_, err := n.svc.AdmitPrincipal(context.Background(), p, plan, n.svc.Now())
	switch {
	case err == nil:
		return true
	case errors.Is(err, quota.ErrLimitExceeded):
		return false
	}
	t.Error(err)
	return false
}

// burst admits total requests from workers goroutines and returns how many
// were admitted.
func (n *sliceNode) burst(t *testing.T, p *quota.Principal, total, workers int) int64 {
	var admitted atomic.Int64
	var wg sync.WaitGroup
	per := total / workers
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				if n.admit(t, p) {
					admitted.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return admitted.Load()
}

func sliceTenant(t *testing.T, svc *quota.Service, limit int64) *quota.Principal {
	t.Helper()
	ctx := context.Background()
	u, err := svc.CreateUser(ctx, quota.NewUser{Name: "S", Email: quota.NewID() + "@example.com",
		Limits: quota.Limits{"messages": {{Limit: limit}, {Limit: 10 * limit, Per: quota.Day}}}})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := svc.CreateToken(ctx, u.ID, quota.NewToken{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := svc.Authenticate(ctx, tok.Secret)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func messagesUsed(t *testing.T, svc *quota.Service, id string) (used, reserved int64) {
	t.Helper()
	u, err := svc.Usage(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range u.Items {
		if it.Resource == "messages" && it.Per == "lifetime" {
			return it.Used, it.Reserved
		}
	}
	return 0, 0
}

// openRedis opens a store on srv, closed with the test.
func openRedis(t *testing.T, srv *redistest.Server) *redisstore.Store {
	t.Helper()
	s, err := redisstore.New(redisstore.Options{Client: srv.Client(t), Timeout: redistest.Timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestSlicesOneNodeExact: a burst of N requests against a cap L on one
// node admits exactly min(N, L), mostly without a store call, on both
// stores; the usage read afterwards is exact and holds no reservation.
func TestSlicesOneNodeExact(t *testing.T) {
	t.Parallel()
	stores := map[string]func(t *testing.T) quota.Store{
		"bolt": func(t *testing.T) quota.Store {
			s, err := boltstore.Open(boltstore.Options{Path: filepath.Join(t.TempDir(), "q.db")})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		},
		"redis": func(t *testing.T) quota.Store { return openRedis(t, redistest.Start(t)) },
	}
	for name, open := range stores {
		t.Run(name, func(t *testing.T) {
			n := newSliceNode(t, open(t), nil, false)
			const limit, total = 20000, 20800
			p := sliceTenant(t, n.svc, limit)
			if got := n.burst(t, p, total, 16); got != limit {
				t.Fatalf("admitted %d of %d against a cap of %d", got, total, limit)
			}
			// Slices were taken: far fewer store admissions than requests.
			if a := n.admits.Load(); a > total/4 {
				t.Fatalf("%d store admissions for %d requests: no slices taken", a, total)
			}
			if used, reserved := messagesUsed(t, n.svc, p.User.ID); used != limit || reserved != 0 {
				t.Fatalf("usage after the burst: used %d reserved %d, want %d and 0", used, reserved, limit)
			}
			t.Logf("%d requests, %d store admissions", total, n.admits.Load())
		})
	}
}

// TestSlicesTwoNodesExact: two gateways on one Redis, each bursting at the
// same tenant, admit exactly the cap between them: a refusal while the
// other node holds a slice recalls it.
func TestSlicesTwoNodesExact(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	open := func() *redisstore.Store { return openRedis(t, srv) }
	sa, sb := open(), open()
	a, b := newSliceNode(t, sa, sa.Broadcaster(), false), newSliceNode(t, sb, sb.Broadcaster(), false)
	time.Sleep(100 * time.Millisecond) // both subscribed
	for round, limit := range []int64{3000, 1500} {
		p := sliceTenant(t, a.svc, limit)
		var got [2]int64
		var wg sync.WaitGroup
		for i, n := range []*sliceNode{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got[i] = n.burst(t, p, 3000, 8)
			}()
		}
		wg.Wait()
		if got[0]+got[1] != limit {
			t.Fatalf("round %d: admitted %d + %d against a cap of %d", round, got[0], got[1], limit)
		}
		time.Sleep(400 * time.Millisecond) // idle slices go back
		if used, reserved := messagesUsed(t, a.svc, p.User.ID); used != limit || reserved != 0 {
			t.Fatalf("round %d: usage used %d reserved %d, want %d and 0", round, used, reserved, limit)
		}
		t.Logf("round %d: %d + %d admitted, %d + %d store admissions", round, got[0], got[1], a.admits.Load(), b.admits.Load())
	}
}

// TestSliceHeldElsewhere is the case the README describes: without a
// Broadcaster to recall it, a slice held by one node can make another
// refuse a request that a single counter would have admitted, until the
// slice goes back (idle, 200 ms); never is more than the cap admitted.
// With a Broadcaster the refusal recalls the slice at once.
func TestSliceHeldElsewhere(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	open := func() *redisstore.Store { return openRedis(t, srv) }
	for _, recall := range []bool{false, true} {
		sa, sb := open(), open()
		var bca, bcb quota.Broadcaster
		if recall {
			bca, bcb = sa.Broadcaster(), sb.Broadcaster()
		}
		a, b := newSliceNode(t, sa, bca, false), newSliceNode(t, sb, bcb, false)
		time.Sleep(100 * time.Millisecond)
		const limit = 2000
		p := sliceTenant(t, a.svc, limit)
		// A bursts until it is left holding part of a slice.
		var byA int64
		for reserved := int64(0); reserved == 0; {
			byA += a.burst(t, p, 400, 8)
			snap, err := sa.Usage(context.Background(), p.User.ID)
			if err != nil {
				t.Fatal(err)
			}
			reserved = snap.Current(quota.ReservedPrefix+"messages", quota.Lifetime)
		}
		// B, one request at a time (its own slices it returns before any
		// refusal), until refused.
		heldSince := time.Now()
		var byB int64
		for b.admit(t, p) {
			byB++
		}
		// On a loaded machine B may be slower than A's slice is kept (idle
		// 200 ms): then A gave it back and B rightly reached the cap.
		aged := time.Since(heldSince) >= 200*time.Millisecond
		switch {
		case byA+byB > limit:
			t.Fatalf("recall=%v: %d + %d admitted over a cap of %d", recall, byA, byB, limit)
		case recall && byA+byB != limit:
			t.Fatalf("recall: B refused at %d + %d of %d", byA, byB, limit)
		case !recall && byA+byB == limit && !aged:
			t.Fatalf("no recall: expected B to be refused while A held a slice (%d + %d)", byA, byB)
		}
		refusedAt := byA + byB
		// Once A's slice is back, B is admitted up to the cap exactly.
		time.Sleep(400 * time.Millisecond)
		for b.admit(t, p) {
			byB++
		}
		if byA+byB != limit {
			t.Fatalf("recall=%v: %d + %d admitted after A's slice went back, want %d", recall, byA, byB, limit)
		}
		t.Logf("recall=%v: B first refused at %d of %d, then admitted up to %d", recall, refusedAt, limit, byA+byB)
	}
}

// TestSliceGivenBackForAHeldRequest: a request that no slice may hold (an
// operator's charge here; an LLM request alike) refused while this node
// holds a slice of the tenant gets the slice back first: one node is a
// single counter whatever the mix of requests.
func TestSliceGivenBackForAHeldRequest(t *testing.T) {
	t.Parallel()
	s, err := boltstore.Open(boltstore.Options{Path: filepath.Join(t.TempDir(), "q.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	n := newSliceNode(t, s, nil, false)
	const limit = 5000
	p := sliceTenant(t, n.svc, limit)
	admitted := n.burst(t, p, 600, 8) // far from the cap: it ends holding a slice
	snap, err := s.Usage(context.Background(), p.User.ID)
	if err != nil {
		t.Fatal(err)
	}
	held := snap.Current(quota.ReservedPrefix+"messages", quota.Lifetime)
	if held == 0 {
		t.Skip("the burst ended holding no slice")
	}
	// All that remains, in one charge: it fits only with the slice back.
	rest := limit - admitted
	if _, err := n.svc.AdmitUses(context.Background(), p.User, []quota.Use{{Resource: "messages", Amount: rest}}); err != nil {
		t.Fatalf("charging the %d that remain while a slice of %d was held: %v", rest, held, err)
	}
	if used, reserved := messagesUsed(t, n.svc, p.User.ID); used != limit || reserved != 0 {
		t.Fatalf("usage: used %d reserved %d, want %d and 0", used, reserved, limit)
	}
}

// TestNoSlices: with slices off (Caddyfile `slices off`) every request is
// admitted by the store, however busy the tenant.
func TestNoSlices(t *testing.T) {
	t.Parallel()
	s, err := boltstore.Open(boltstore.Options{Path: filepath.Join(t.TempDir(), "q.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	n := newSliceNode(t, s, nil, true)
	p := sliceTenant(t, n.svc, 100000)
	if got := n.burst(t, p, 2000, 8); got != 2000 {
		t.Fatalf("admitted %d of 2000", got)
	}
	if a := n.admits.Load(); a != 2000 {
		t.Fatalf("%d store admissions for 2000 requests, want one each", a)
	}
	snap, err := s.Usage(context.Background(), p.User.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r := snap.Current(quota.ReservedPrefix+"messages", quota.Lifetime); r != 0 {
		t.Fatalf("%d reserved with slices off", r)
	}
}

// TestSlicesKeepWindowsWhenTheServiceClockMoves: slices measure time on
// the system clock, which moves with the store's: a service clock moved a
// day ahead (a test's, or one that judges expiry differently) must not
// make a slice given back drop its daily charges (found by review of a
// change that ran slices on the service clock: 300 messages admitted, 20
// left in the day's counter).
func TestSlicesKeepWindowsWhenTheServiceClockMoves(t *testing.T) {
	t.Parallel()
	s, err := boltstore.Open(boltstore.Options{Path: filepath.Join(t.TempDir(), "q.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	clock := testclock.At(time.Now())
	svc, err := quota.NewService(quota.Options{Store: s, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	p := sliceTenant(t, svc, 100_000)
	plan := func() *quota.Plan { return (&quota.Route{}).Plan(quota.MeterUses{}, quota.TokenRequest{}) }
	for range 300 {
		if _, err := svc.AdmitPrincipal(context.Background(), p, plan(), svc.Now()); err != nil {
			t.Fatal(err)
		}
	}
	clock.Add(25 * time.Hour)
	u, err := svc.Usage(context.Background(), p.User.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range u.Items {
		if it.Resource == "messages" && it.Used != 300 {
			t.Fatalf("messages per %s: %d used, want 300", it.Per, it.Used)
		}
	}
}
