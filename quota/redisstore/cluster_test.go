package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tenantquota/caddy-tenant-quota/internal/redistest"
	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/storetest"
)

func TestConformanceCluster(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t)
	var n atomic.Int64
	storetest.Run(t, func(t *testing.T) quota.Store {
		return newClusterStore(t, c, fmt.Sprintf("tq%d", n.Add(1)))
	})
}

// newClusterStore returns a Store on a client of c, closed when t ends, that
// fails t if any command it sends, even one whose error the store ignores,
// is refused for touching keys of more than one slot.
func newClusterStore(t *testing.T, c *redistest.Cluster, prefix string) *Store {
	t.Helper()
	rdb := c.Client(t)
	hook := &slotErrors{}
	rdb.AddHook(hook)
	s, err := New(Options{Client: rdb, Thresholds: storetest.Thresholds, Prefix: prefix, Timeout: redistest.Timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		for _, e := range hook.seen() {
			t.Errorf("cross-slot command: %s", e)
		}
	})
	return s
}

// slotErrors is a go-redis hook that records replies refusing a command
// because its keys span slots: CROSSSLOT for a multi-key command or a
// transaction, "non local key" for a script that touched an undeclared key.
type slotErrors struct {
	mu   sync.Mutex
	errs []string
}

func (h *slotErrors) check(cmds ...redis.Cmder) {
	for _, c := range cmds {
		err := c.Err()
		if err == nil {
			continue
		}
		msg := strings.ToLower(err.Error())
		if strings.Contains(msg, "crossslot") || strings.Contains(msg, "non local key") {
			h.mu.Lock()
			h.errs = append(h.errs, fmt.Sprintf("%s: %v", c.Name(), err))
			h.mu.Unlock()
		}
	}
}

func (h *slotErrors) seen() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.errs...)
}

func (h *slotErrors) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *slotErrors) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.check(cmd)
		return err
	}
}

func (h *slotErrors) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		h.check(cmds...)
		return err
	}
}

// TestCluster runs the cluster-only tests on one cluster, flushed before
// each.
func TestCluster(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t)
	for _, tt := range []struct {
		name string
		fn   func(t *testing.T, c *redistest.Cluster)
	}{
		{"SlotHookSeesCrossSlot", testSlotHookSeesCrossSlot},
		{"NoCrossSlot", testNoCrossSlot},
		{"ConcurrentAdmitOnTwoMasters", testClusterConcurrentAdmit},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c.FlushAll(t)
			tt.fn(t, c)
		})
	}
}

// testSlotHookSeesCrossSlot makes sure the hook behind newClusterStore would
// notice: a cross-slot MGET, a transaction and a script that reaches outside
// its declared keys are all recorded.
func testSlotHookSeesCrossSlot(t *testing.T, c *redistest.Cluster) {
	rdb := c.Client(t)
	hook := &slotErrors{}
	rdb.AddHook(hook)
	ctx := testContext(t)
	// "a" and "b" hash to different slots (15495 and 3300).
	for _, tt := range []struct {
		name string
		run  func() error
	}{
		{"MGET", func() error { return rdb.MGet(ctx, "a", "b").Err() }},
		{"MULTI", func() error {
			_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
				p.Set(ctx, "{x}a", 1, 0)
				p.Do(ctx, "DEL", "{x}a", "b")
				return nil
			})
			return err
		}},
		{"EVAL", func() error { return rdb.Eval(ctx, `return redis.call("GET", "b")`, []string{"a"}).Err() }},
	} {
		before := len(hook.seen())
		if err := tt.run(); err == nil {
			t.Fatalf("cross-slot %s succeeded", tt.name)
		}
		if got := hook.seen(); len(got) == before {
			t.Fatalf("cross-slot %s not recorded; recorded so far: %v", tt.name, got)
		}
	}
}

// testNoCrossSlot drives every Store method, including the
// best-effort paths whose errors the store swallows (token touches, index
// releases, key deletions of a removed user), over users spread across all
// three masters; newClusterStore fails the test on any cross-slot reply.
func testNoCrossSlot(t *testing.T, c *redistest.Cluster) {
	s := newClusterStore(t, c, "")
	ctx := testContext(t)

	const n = 30
	var users []*quota.User
	used := map[string]time.Time{}
	for i := 0; i < n; i++ {
		u := createUser(t, s, fmt.Sprintf("u%d@example.com", i), fmt.Sprintf("ext-%d", i))
		users = append(users, u)
		for j := 0; j < 2; j++ {
			tok := &quota.Token{ID: quota.NewID(), UserID: u.ID, Name: "t", Hash: fmt.Sprintf("%064x", i*2+j+1), CreatedAt: time.Now()}
			if err := s.CreateToken(ctx, tok); err != nil {
				t.Fatal(err)
			}
			used[tok.Hash] = time.Now()
		}
		if _, err := s.Admit(ctx, u.ID, "", []quota.Charge{
			{Resource: "messages", Limit: 50, Amount: 1},
			{Resource: "tokens", Per: quota.Day, Limit: quota.NoLimit, Amount: 7},
		}); err != nil {
			t.Fatal(err)
		}
	}
	// The users must span every master, or multi-user calls prove little.
	node := nodeOf(t, c)
	nodes := map[string]bool{}
	for _, u := range users {
		nodes[node(s.userKey(u.ID))] = true
	}
	if len(nodes) != len(c.Addrs()) {
		t.Fatalf("users' keys on %d of %d masters", len(nodes), len(c.Addrs()))
	}

	if err := s.TouchTokens(ctx, used); err != nil {
		t.Fatal(err)
	}
	page, more, err := s.ListUsers(ctx, "", n)
	if err != nil || more || len(page) != n {
		t.Fatalf("ListUsers: %d users, more %v, %v", len(page), more, err)
	}
	for i, u := range users {
		toks, err := s.ListTokens(ctx, u.ID)
		if err != nil || len(toks) != 2 || toks[0].LastUsedAt == nil {
			t.Fatalf("ListTokens(%d): %+v %v", i, toks, err)
		}
		if _, err := s.GetTokenByHash(ctx, toks[0].Hash); err != nil {
			t.Fatal(err)
		}
		if snap, err := s.Usage(ctx, u.ID); err != nil || snap.Current("messages", quota.Lifetime) != 1 {
			t.Fatalf("Usage(%d): %+v %v", i, snap, err)
		}
		switch i % 3 {
		case 0:
			u.Email = fmt.Sprintf("moved%d@example.com", i)
			u.ExternalID = ""
			u.Revision++
			if err := s.UpdateUser(ctx, u); err != nil {
				t.Fatal(err)
			}
			if err := s.ResetUsage(ctx, u.ID, []string{"messages"}); err != nil {
				t.Fatal(err)
			}
		case 1:
			if _, err := s.DeleteToken(ctx, u.ID, toks[1].ID); err != nil {
				t.Fatal(err)
			}
			if err := s.ResetUsage(ctx, u.ID, nil); err != nil {
				t.Fatal(err)
			}
		case 2:
			if err := s.DeleteUser(ctx, u.ID); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A conflicting create claims, fails and releases indexes.
	dup := &quota.User{ID: quota.NewID(), Name: "x", Email: "moved0@example.com", ExternalID: "ext-fresh", Status: quota.StatusActive}
	if err := s.CreateUser(ctx, dup); !errors.Is(err, quota.ErrConflict) {
		t.Fatalf("duplicate email: want ErrConflict, got %v", err)
	}
	if page, _, err := s.ListUsers(ctx, "", n); err != nil || len(page) != n-n/3 {
		t.Fatalf("ListUsers after deletes: %d users, %v", len(page), err)
	}
}

// nodeOf returns a function that names the master serving a key of c.
func nodeOf(t *testing.T, c *redistest.Cluster) func(key string) string {
	t.Helper()
	rdb := c.Client(t)
	ctx := testContext(t)
	shards, err := rdb.ClusterShards(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	return func(key string) string {
		t.Helper()
		slot, err := rdb.ClusterKeySlot(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, sh := range shards {
			for _, r := range sh.Slots {
				if r.Start <= slot && slot <= r.End {
					for _, n := range sh.Nodes {
						if n.Role == "master" {
							return fmt.Sprintf("%s:%d", n.IP, n.Port)
						}
					}
				}
			}
		}
		t.Fatalf("no node serves slot %d", slot)
		return ""
	}
}

// testClusterConcurrentAdmit admits concurrently for two users whose keys
// live on different masters: 200 requests each against a cap of 50.
func testClusterConcurrentAdmit(t *testing.T, c *redistest.Cluster) {
	s := newClusterStore(t, c, "")
	node := nodeOf(t, c)
	ids := []string{quota.NewID()}
	for len(ids) < 2 {
		if id := quota.NewID(); node(s.usageKey(id)) != node(s.usageKey(ids[0])) {
			ids = append(ids, id)
		}
	}
	const n, limit = 200, 50
	var allowed [2]atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	start := make(chan struct{})
	for i := 0; i < 2*n; i++ {
		wg.Add(1)
		go func(u int) {
			defer wg.Done()
			<-start
			adm, err := s.Admit(context.Background(), ids[u], "", []quota.Charge{{Resource: "messages", Limit: limit, Amount: 1}})
			if err != nil {
				errs <- err
				return
			}
			if adm.Allowed {
				allowed[u].Add(1)
			}
		}(i % 2)
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for u, id := range ids {
		if got := allowed[u].Load(); got != limit {
			t.Fatalf("user %d: %d of %d admitted, want %d", u, got, n, limit)
		}
		snap, err := s.Usage(testContext(t), id)
		if err != nil {
			t.Fatal(err)
		}
		if got := snap.Current("messages", quota.Lifetime); got != limit {
			t.Fatalf("user %d: counter = %d, want %d", u, got, limit)
		}
	}
}
