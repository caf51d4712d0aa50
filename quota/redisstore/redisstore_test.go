package redisstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"strconv"
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

func TestConformance(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	var n atomic.Int64
	storetest.Run(t, func(t *testing.T) quota.Store {
		// One key prefix per test: they run side by side on one server.
		return newStore(t, srv, Options{Thresholds: storetest.Thresholds, Prefix: fmt.Sprintf("tq%d", n.Add(1))})
	})
}

// newStore returns a Store on srv, closed when t ends.
func newStore(t *testing.T, srv *redistest.Server, opts Options) *Store {
	t.Helper()
	opts.Client = srv.Client(t)
	if opts.Timeout == 0 {
		opts.Timeout = redistest.Timeout
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// testContext bounds a test that hangs. It is no time limit: beside a
// second suite on this 2-core machine, 900 store calls took more than the
// 10 s it once was.
func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func createUser(t *testing.T, s *Store, email, ext string) *quota.User {
	t.Helper()
	now := time.Now().UTC()
	u := &quota.User{
		ID: quota.NewID(), Name: "User", Email: email, ExternalID: ext, Status: quota.StatusActive,
		Limits: quota.Limits{"messages": {{Limit: 50}}}, CreatedAt: now, UpdatedAt: now,
	}
	if err := s.CreateUser(testContext(t), u); err != nil {
		t.Fatalf("CreateUser(%s): %v", email, err)
	}
	return u
}

// hashTag returns the part of key that Redis Cluster hashes, per the
// cluster specification.
func hashTag(key string) string {
	open := strings.IndexByte(key, '{')
	if open < 0 {
		return key
	}
	n := strings.IndexByte(key[open+1:], '}')
	if n <= 0 {
		return key
	}
	return key[open+1 : open+1+n]
}

func TestHashTagHelper(t *testing.T) {
	t.Parallel()
	for key, want := range map[string]string{
		"tq:{abc}:user": "abc",
		"tq:{}:user":    "tq:{}:user",
		"tq:users":      "tq:users",
		"a{b}c{d}":      "b",
		"tq:{a}b}:user": "a",
	} {
		if got := hashTag(key); got != want {
			t.Errorf("hashTag(%q) = %q, want %q", key, got, want)
		}
	}
}

func TestKeysCarryUserHashTag(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := newStore(t, srv, Options{})
	ctx := testContext(t)
	u := createUser(t, s, "a@example.com", "ext-a")
	tok := &quota.Token{ID: quota.NewID(), UserID: u.ID, Name: "t", Hash: strings.Repeat("ab", 32), CreatedAt: time.Now()}
	if err := s.CreateToken(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if err := s.TouchTokens(ctx, map[string]time.Time{tok.Hash: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Admit(ctx, u.ID, "", []quota.Charge{
		{Resource: "messages", Limit: 50, Amount: 1},
		{Resource: "tokens", Per: quota.Month, Limit: quota.NoLimit, Amount: 10},
	}); err != nil {
		t.Fatal(err)
	}

	rdb := srv.Client(t)
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{
		"tq:{" + u.ID + "}:user":   true,
		"tq:{" + u.ID + "}:usage":  true,
		"tq:{" + u.ID + "}:tokens": true,
		"tq:email:a@example.com":   true,
		"tq:ext:ext-a":             true,
		"tq:tok:" + tok.Hash:       true,
		"tq:users":                 true,
	}
	if len(keys) != len(want) {
		t.Fatalf("keys %v, want %d keys", keys, len(want))
	}
	for _, k := range keys {
		if !want[k] {
			t.Fatalf("unexpected key %q", k)
		}
		if strings.HasPrefix(k, "tq:{") && hashTag(k) != u.ID {
			t.Fatalf("key %q hashes on %q, not the user id", k, hashTag(k))
		}
	}
	// Index keys are permanent once the user is written.
	for _, k := range []string{"tq:email:a@example.com", "tq:ext:ext-a"} {
		if ttl, err := rdb.PTTL(ctx, k).Result(); err != nil || ttl != -1 {
			t.Fatalf("PTTL %s = %v, %v; want no expiry", k, ttl, err)
		}
	}
	fields, err := rdb.HGetAll(ctx, "tq:{"+u.ID+"}:usage").Result()
	if err != nil {
		t.Fatal(err)
	}
	if fields["messages|lifetime"] != "1" || fields["messages|lifetime|s"] != "0" || fields["tokens|month"] != "10" {
		t.Fatalf("usage hash fields: %v", fields)
	}

	if err := s.DeleteUser(ctx, u.ID); err != nil {
		t.Fatal(err)
	}
	// Only the delete's tombstone is left, and it expires by itself.
	keys, _ = rdb.Keys(ctx, "*").Result()
	for _, k := range keys {
		if ttl, _ := rdb.TTL(ctx, k).Result(); k != "tq:{"+u.ID+"}:usage" || ttl <= 0 {
			t.Fatalf("key %s left after DeleteUser (ttl %v)", k, ttl)
		}
	}
}

func TestPrefix(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	a := newStore(t, srv, Options{Prefix: "one"})
	b := newStore(t, srv, Options{Prefix: "two"})
	u := createUser(t, a, "a@example.com", "")
	if _, err := b.GetUser(testContext(t), u.ID); !errors.Is(err, quota.ErrNotFound) {
		t.Fatalf("another prefix sees the user: %v", err)
	}
	createUser(t, b, "a@example.com", "")
	keys, _ := srv.Client(t).Keys(testContext(t), "one:*").Result()
	if len(keys) != 3 {
		t.Fatalf("keys under one: %v", keys)
	}
}

func TestNewChecksOptions(t *testing.T) {
	t.Parallel()
	if _, err := New(Options{}); err == nil {
		t.Error("New without a client succeeded")
	}
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	if _, err := New(Options{Client: c, Prefix: "a{b}"}); err == nil {
		t.Error("New with braces in the prefix succeeded")
	}
	if _, err := New(Options{Client: c, Timeout: -time.Second}); err == nil {
		t.Error("New with a negative timeout succeeded")
	}
}

// TestWindowStartLua checks the script's calendar arithmetic against
// quota.Period.Window on chosen dates and on random instants up to 2400.
func TestWindowStartLua(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	script := redis.NewScript(luaWindowStart + `
local out = {}
for i = 2, #ARGV do out[#out + 1] = window_start(ARGV[1], tonumber(ARGV[i])) end
return out
`)
	dates := []time.Time{
		time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(1970, 1, 31, 23, 59, 59, 0, time.UTC),
		time.Date(1970, 3, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2000, 2, 29, 12, 0, 0, 0, time.UTC),
		time.Date(2000, 3, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2024, 2, 28, 23, 59, 59, 0, time.UTC),
		time.Date(2024, 2, 29, 0, 0, 0, 0, time.UTC),
		time.Date(2024, 2, 29, 23, 59, 59, 0, time.UTC),
		time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2024, 12, 31, 23, 59, 59, 0, time.UTC),
		time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2038, 1, 19, 3, 14, 8, 0, time.UTC),
		time.Date(2100, 2, 28, 23, 59, 59, 0, time.UTC),
		time.Date(2100, 3, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2100, 12, 31, 23, 59, 59, 0, time.UTC),
	}
	rng := rand.New(rand.NewSource(1))
	limit := time.Date(2400, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	for i := 0; i < 2000; i++ {
		dates = append(dates, time.Unix(rng.Int63n(limit), 0).UTC())
	}
	args := make([]any, 0, len(dates)+1)
	for _, per := range []quota.Period{quota.Lifetime, quota.Minute, quota.Hour, quota.Day, quota.Month} {
		t.Run(per.String(), func(t *testing.T) {
			args = append(args[:0], per.String())
			for _, d := range dates {
				args = append(args, d.Unix())
			}
			got, err := script.Run(testContext(t), rdb, nil, args...).Int64Slice()
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(dates) {
				t.Fatalf("%d results for %d dates", len(got), len(dates))
			}
			for i, d := range dates {
				start, _ := per.Window(d)
				want := int64(0)
				if !start.IsZero() {
					want = start.Unix()
				}
				if got[i] != want {
					t.Fatalf("window_start(%s, %v) = %v, want %v", per, d, time.Unix(got[i], 0).UTC(), start)
				}
			}
		})
	}
}

// TestAdmitStaleWindow plants counters from the previous month and the
// current one: only the current one counts against the limit.
func TestAdmitStaleWindow(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := newStore(t, srv, Options{})
	rdb := srv.Client(t)
	ctx := testContext(t)
	id := quota.NewID()
	now, err := rdb.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	cur, _ := quota.Month.Window(now)
	prev, _ := quota.Month.Window(cur.Add(-time.Second))
	key := "tq:{" + id + "}:usage"
	charge := quota.Charge{Resource: "messages", Per: quota.Month, Limit: 50, Amount: 1}

	rdb.HSet(ctx, key, "messages|month", 50, "messages|month|s", prev.Unix())
	adm, err := s.Admit(ctx, id, "", []quota.Charge{charge})
	if err != nil {
		t.Fatal(err)
	}
	if !adm.Allowed || adm.Used[0] != 1 {
		t.Fatalf("a full counter of last month blocked this month: %+v", adm)
	}
	if got := rdb.HGet(ctx, key, "messages|month|s").Val(); got != strconv.FormatInt(cur.Unix(), 10) {
		t.Fatalf("window start after admission = %s, want %d", got, cur.Unix())
	}

	rdb.HSet(ctx, key, "messages|month", 50)
	adm, err = s.Admit(ctx, id, "", []quota.Charge{charge})
	if err != nil {
		t.Fatal(err)
	}
	if adm.Allowed || adm.Denied != 0 || adm.Used[0] != 50 {
		t.Fatalf("a full counter of this month admitted: %+v", adm)
	}

	snap, err := s.Usage(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Counters) != 1 || !snap.Counters[0].Start.Equal(cur) || snap.Current("messages", quota.Month) != 50 {
		t.Fatalf("usage: %+v", snap)
	}
	if d := adm.Now.Sub(snap.Now); d > time.Second || d < -time.Second {
		t.Fatalf("store clocks disagree: %v vs %v", adm.Now, snap.Now)
	}
}

// TestAdmitMatchesApplyCharges replays random charges through the script
// and quota.ApplyCharges at the store's time and compares every outcome.
func TestAdmitMatchesApplyCharges(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := newStore(t, srv, Options{})
	ctx := testContext(t)
	id := quota.NewID()
	rng := rand.New(rand.NewSource(2))
	resources := []string{"messages", "tokens"}
	pers := []quota.Period{quota.Lifetime, quota.Day, quota.Month}
	counters := map[string]quota.CounterState{}
	for step := 0; step < 500; step++ {
		charges := make([]quota.Charge, 1+rng.Intn(4))
		for i := range charges {
			limit := int64(rng.Intn(12))
			if rng.Intn(5) == 0 {
				limit = quota.NoLimit
			}
			charges[i] = quota.Charge{
				Resource: resources[rng.Intn(len(resources))],
				Per:      pers[rng.Intn(len(pers))],
				Limit:    limit,
				Amount:   int64(rng.Intn(7) - 2),
			}
		}
		got, err := s.Admit(ctx, id, "", charges)
		if err != nil {
			t.Fatal(err)
		}
		want := quota.ApplyCharges(counters, charges, got.Now)
		if got.Allowed != want.Allowed || got.Denied != want.Denied || !equalInts(got.Used, want.Used) {
			t.Fatalf("step %d, charges %+v:\n got %+v\nwant %+v", step, charges, got, want)
		}
	}
	snap, err := s.Usage(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	for key, c := range counters {
		res, per, _ := quota.ParseCounterKey(key)
		if got := snap.Current(res, per); got != c.Used {
			t.Fatalf("%s = %d, want %d", key, got, c.Used)
		}
	}
}

func equalInts(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestAdmitLargeNumbers(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := newStore(t, srv, Options{})
	ctx := testContext(t)
	id := quota.NewID()
	big := int64(quota.MaxLimit)
	for i, want := range []int64{big, 2 * big, 3 * big} {
		adm, err := s.Admit(ctx, id, "", []quota.Charge{{Resource: "tokens", Limit: quota.NoLimit, Amount: big}})
		if err != nil || !adm.Allowed || adm.Used[0] != want {
			t.Fatalf("step %d: %+v %v", i, adm, err)
		}
	}
	raw := srv.Client(t).HGet(ctx, "tq:{"+id+"}:usage", "tokens|lifetime").Val()
	if raw != strconv.FormatInt(3*big, 10) {
		t.Fatalf("stored counter %q, want %d", raw, 3*big)
	}
	if _, err := s.Admit(ctx, id, "", []quota.Charge{{Resource: "tokens", Limit: big + 1, Amount: 1}}); !errors.Is(err, quota.ErrInvalid) {
		t.Fatalf("limit over MaxLimit: want ErrInvalid, got %v", err)
	}
	if _, err := s.Admit(ctx, id, "", []quota.Charge{{Resource: "a|b", Limit: 1, Amount: 1}}); !errors.Is(err, quota.ErrInvalid) {
		t.Fatalf("bad resource name: want ErrInvalid, got %v", err)
	}
}

func TestConcurrentAdmit(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := newStore(t, srv, Options{})
	id := quota.NewID()
	const n, limit = 200, 50
	var allowed atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			adm, err := s.Admit(context.Background(), id, "", []quota.Charge{{Resource: "messages", Limit: limit, Amount: 1}})
			if err != nil {
				errs <- err
				return
			}
			if adm.Allowed {
				allowed.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if allowed.Load() != limit {
		t.Fatalf("%d admitted, want %d", allowed.Load(), limit)
	}
	snap, err := s.Usage(testContext(t), id)
	if err != nil {
		t.Fatal(err)
	}
	if got := snap.Current("messages", quota.Lifetime); got != limit {
		t.Fatalf("counter = %d, want %d", got, limit)
	}
}

func TestConcurrentCreateSameEmail(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := newStore(t, srv, Options{})
	const n = 20
	var created atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u := &quota.User{ID: quota.NewID(), Name: "x", Email: "same@example.com", Status: quota.StatusActive}
			err := s.CreateUser(context.Background(), u)
			switch {
			case err == nil:
				created.Add(1)
			case !errors.Is(err, quota.ErrConflict):
				t.Errorf("CreateUser: %v", err)
			}
		}()
	}
	wg.Wait()
	if created.Load() != 1 {
		t.Fatalf("%d users created with one email", created.Load())
	}
}

// TestIndexRecovery covers index keys left behind by a node that failed
// half-way: a permanent key whose user is gone is taken over, a pending
// claim is respected until it expires.
func TestIndexRecovery(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := newStore(t, srv, Options{})
	rdb := srv.Client(t)
	ctx := testContext(t)

	rdb.Set(ctx, "tq:email:orphan@example.com", quota.NewID(), 0)
	if _, err := s.GetUserByEmail(ctx, "orphan@example.com"); !errors.Is(err, quota.ErrNotFound) {
		t.Fatalf("orphan index found a user: %v", err)
	}
	u := createUser(t, s, "orphan@example.com", "")
	if got, err := s.GetUserByEmail(ctx, "orphan@example.com"); err != nil || got.ID != u.ID {
		t.Fatalf("after take-over: %v %v", got, err)
	}

	// An index key still naming a user that moved on to another email.
	v := createUser(t, s, "moved@example.com", "")
	rdb.Set(ctx, "tq:email:stale@example.com", v.ID, 0)
	createUser(t, s, "stale@example.com", "")

	rdb.Set(ctx, "tq:email:pending@example.com", quota.NewID(), time.Minute)
	w := &quota.User{ID: quota.NewID(), Name: "x", Email: "pending@example.com", Status: quota.StatusActive}
	if err := s.CreateUser(ctx, w); !errors.Is(err, quota.ErrConflict) {
		t.Fatalf("pending claim: want ErrConflict, got %v", err)
	}

	// A duplicate id must not release the existing user's indexes.
	dup := u.Clone()
	if err := s.CreateUser(ctx, dup); !errors.Is(err, quota.ErrConflict) {
		t.Fatalf("duplicate id: want ErrConflict, got %v", err)
	}
	if got, err := s.GetUserByEmail(ctx, u.Email); err != nil || got.ID != u.ID {
		t.Fatalf("after duplicate id: %v %v", got, err)
	}
}

func TestListUsersSkipsMissingRecords(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := newStore(t, srv, Options{})
	rdb := srv.Client(t)
	ctx := testContext(t)
	var ids []string
	for i := 0; i < 6; i++ {
		ids = append(ids, createUser(t, s, "u"+strconv.Itoa(i)+"@example.com", "").ID)
	}
	// Records of a half-done delete: listed ids without a user.
	rdb.Del(ctx, "tq:{"+ids[1]+"}:user", "tq:{"+ids[2]+"}:user")
	page, more, err := s.ListUsers(ctx, "", 2)
	if err != nil || !more || len(page) != 2 || page[0].ID != ids[0] || page[1].ID != ids[3] {
		t.Fatalf("first page: %v %v %v", page, more, err)
	}
	page, more, err = s.ListUsers(ctx, ids[3], 2)
	if err != nil || more || len(page) != 2 || page[1].ID != ids[5] {
		t.Fatalf("second page: %v %v %v", page, more, err)
	}
	if _, _, err := s.ListUsers(ctx, "", 0); !errors.Is(err, quota.ErrInvalid) {
		t.Fatalf("take 0: %v", err)
	}
}

func TestDefaultDeadline(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := newStore(t, srv, Options{Timeout: 100 * time.Millisecond})
	rdb := srv.Client(t)
	ctx := testContext(t)
	// The server stays paused until the test ends and kills it.
	if err := rdb.Do(ctx, "CLIENT", "PAUSE", "1000", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := s.GetUser(context.Background(), quota.NewID())
	if err == nil || errors.Is(err, quota.ErrNotFound) {
		t.Fatalf("GetUser on a paused server: %v", err)
	}
	if time.Since(start) > 900*time.Millisecond {
		t.Fatalf("GetUser waited out the pause instead of its deadline: %v", err)
	}
}

func TestParseURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in       string
		kind     string // which client NewUniversalClient builds: single, cluster or failover
		addrs    []string
		master   string
		db       int
		user     string
		pass     string
		sentUser string
		sentPass string
		tls      bool
		wantErr  bool
	}{
		{in: "redis://127.0.0.1:6379/0", kind: "single", addrs: []string{"127.0.0.1:6379"}},
		{in: "redis://:s3cret@cache:6380/2?dial_timeout=3", kind: "single", addrs: []string{"cache:6380"}, db: 2, pass: "s3cret"},
		{in: "rediss://cache", kind: "single", addrs: []string{"cache:6379"}, tls: true},
		{in: "REDIS://cache:1", kind: "single", addrs: []string{"cache:1"}},
		{in: "10.0.0.1:7000, 10.0.0.2:7000,10.0.0.3:7000", kind: "cluster", addrs: []string{"10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"}},
		{in: "cache:6379", kind: "single", addrs: []string{"cache:6379"}},

		{in: "redis-cluster://n1:7000,n2:7001,n3", kind: "cluster", addrs: []string{"n1:7000", "n2:7001", "n3:6379"}},
		{in: "redis-cluster://cfg.example.com:6379", kind: "cluster", addrs: []string{"cfg.example.com:6379"}},
		{in: "rediss-cluster://app:s3cret@n1:7000,n2:7000/?pool_size=20", kind: "cluster", addrs: []string{"n1:7000", "n2:7000"}, user: "app", pass: "s3cret", tls: true},
		{in: "redis-cluster://[::1]:7000,[::1]", kind: "cluster", addrs: []string{"[::1]:7000", "[::1]:6379"}},
		{in: "redis-cluster://n1:7000/0", kind: "cluster", addrs: []string{"n1:7000"}},

		{in: "redis-sentinel://s1:26379,s2:26380,s3/mymaster", kind: "failover", addrs: []string{"s1:26379", "s2:26380", "s3:26379"}, master: "mymaster"},
		{in: "redis-sentinel://:s3cret@s1/mymaster/3", kind: "failover", addrs: []string{"s1:26379"}, master: "mymaster", db: 3, pass: "s3cret"},
		{in: "redis-sentinel://app:p%40ss@s1,s2/my%2Fmaster?sentinel_username=sen&sentinel_password=s3cret&read_timeout=2s", kind: "failover",
			addrs: []string{"s1:26379", "s2:26379"}, master: "my/master", user: "app", pass: "p@ss", sentUser: "sen", sentPass: "s3cret"},
		{in: "rediss-sentinel://s1:26379/mymaster?skip_verify=true", kind: "failover", addrs: []string{"s1:26379"}, master: "mymaster", tls: true},
		{in: " Redis-Sentinel://s1/m ", kind: "failover", addrs: []string{"s1:26379"}, master: "m"},

		{in: "cache", wantErr: true},
		{in: "", wantErr: true},
		{in: "a:1,,b:2", wantErr: true},
		{in: "http://cache:6379", wantErr: true},
		{in: "unix:///tmp/redis.sock", wantErr: true},
		{in: "redis://:s3cret@cache:6379/0?bogus=1", wantErr: true},
		{in: "redis://u:s3cret@cache:port/0", wantErr: true},
		{in: "redis-cluster://:s3cret@n1:7000,,n2:7000", wantErr: true},
		{in: "redis-cluster://:s3cret@n1:7000/1", wantErr: true},
		{in: "redis-cluster://:s3cret@n1:port", wantErr: true},
		{in: "redis-cluster://:s3cret@n1:70000", wantErr: true},
		{in: "redis-cluster://", wantErr: true},
		{in: "redis-cluster://:s3cret@n1?bogus=1", wantErr: true},
		{in: "redis-sentinel://:s3cret@s1:26379", wantErr: true},
		{in: "redis-sentinel://:s3cret@s1:26379/", wantErr: true},
		{in: "redis-sentinel://:s3cret@s1:26379/m/x", wantErr: true},
		{in: "redis-sentinel://:s3cret@s1:26379/m/1/2", wantErr: true},
		{in: "redis-sentinel://:s3/cret@s1:26379/m", wantErr: true},
		{in: "redis-sentinel://:s3cret@s1:26379/m?sentinel_password=%zz", wantErr: true},
		{in: "redis-sentinel://s1/m?master_name=other", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			o, err := ParseURL(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseURL(%q) succeeded: %+v", tt.in, o)
				}
				if strings.Contains(err.Error(), "s3") {
					t.Fatalf("error repeats the password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(o.Addrs, ",") != strings.Join(tt.addrs, ",") || o.MasterName != tt.master || o.DB != tt.db ||
				o.Username != tt.user || o.Password != tt.pass ||
				o.SentinelUsername != tt.sentUser || o.SentinelPassword != tt.sentPass ||
				(o.TLSConfig != nil) != tt.tls || !o.ContextTimeoutEnabled {
				t.Fatalf("ParseURL(%q) = %+v", tt.in, o)
			}
			if o.TLSConfig != nil && len(o.Addrs) > 1 && o.TLSConfig.ServerName != "" {
				t.Fatalf("TLS ServerName %q pins every host to one name", o.TLSConfig.ServerName)
			}
			c := redis.NewUniversalClient(o)
			defer c.Close()
			if got := clientKind(c); got != tt.kind {
				t.Fatalf("NewUniversalClient builds a %s client, want %s", got, tt.kind)
			}
		})
	}
}

// clientKind names the kind of client that c is.
func clientKind(c redis.UniversalClient) string {
	switch c := c.(type) {
	case *redis.ClusterClient:
		return "cluster"
	case *redis.Client:
		if c.Options().Addr == "FailoverClient" {
			return "failover"
		}
		return "single"
	}
	return fmt.Sprintf("%T", c)
}

// TestSentinel admits through the failover client that a redis-sentinel://
// URL configures, and finds the count on the master the Sentinel names.
func TestSentinel(t *testing.T) {
	t.Parallel()
	master := redistest.Start(t)
	sentinel := redistest.StartSentinel(t, master, "tq-master")
	opts, err := ParseURL("redis-sentinel://" + sentinel.Addr() + "/tq-master")
	if err != nil {
		t.Fatal(err)
	}
	client := redis.NewUniversalClient(opts)
	if kind := clientKind(client); kind != "failover" {
		t.Fatalf("sentinel url builds a %s client", kind)
	}
	s, err := New(Options{Client: client, Timeout: redistest.Timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	ctx := testContext(t)
	id := quota.NewID()
	adm, err := s.Admit(ctx, id, "", []quota.Charge{{Resource: "messages", Limit: 5, Amount: 2}})
	if err != nil || !adm.Allowed {
		t.Fatalf("Admit through sentinel: %+v %v", adm, err)
	}
	got, err := master.Client(t).HGet(ctx, "tq:{"+id+"}:usage", "messages|lifetime").Result()
	if err != nil || got != "2" {
		t.Fatalf("counter on the master = %q, %v; want 2", got, err)
	}
}

// TestParseURLNeverEchoes: whatever the typo, an error never repeats a
// password.
func TestParseURLNeverEchoes(t *testing.T) {
	t.Parallel()
	for _, u := range []string{
		"redis:/:s3cretpw@host", "host:port :s3cretpw@h", "redis://:s3cretpw@ho st:6379", "redis://:s3cretpw@host:abc",
		"rediss-cluster://:s3cretpw@h1:1,h2:x", "redis-sentinel://:s3cretpw@s1", "redis://user:s3cretpw@[::1",
		"s3cretpw", ":s3cretpw@host:6379", "h1:6379,:s3cretpw@h2:6379", "redis//:s3cretpw@host:6379",
	} {
		_, err := ParseURL(u)
		if err == nil {
			t.Errorf("%q accepted", u)
			continue
		}
		if strings.Contains(err.Error(), "s3cretpw") {
			t.Errorf("the error for a typo repeats the password: %v", err)
		}
	}
}

// TestLeaseReleasesOnlyItsWindow: a lease records the window it was taken
// in, and releases nothing from another window (which never held it).
// The test moves the lease back a minute rather than waiting for one to
// end; a lease body of the older format ("resource|period|amount")
// releases from the current window.
func TestLeaseReleasesOnlyItsWindow(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := newStore(t, srv, Options{})
	ctx := testContext(t)
	rdb := srv.Client(t)
	for _, body := range []string{"older window", "old format"} {
		id, rid := quota.NewID(), quota.NewID()
		held := quota.Charge{Resource: "tokens", Per: quota.Day, Limit: 100, Amount: 60, Hold: time.Hour}
		if adm, err := s.Admit(ctx, id, rid, []quota.Charge{held}); err != nil || !adm.Allowed {
			t.Fatalf("reserve: %+v %v", adm, err)
		}
		leases := s.tag(id) + ":leases"
		got, err := rdb.HGet(ctx, leases, rid).Result()
		start, _ := quota.Day.Window(time.Now())
		if want := fmt.Sprintf("tokens|day|%d|60", start.Unix()); err != nil || got != want {
			t.Fatalf("lease body %q %v, want %q", got, err, want)
		}
		// Moved to yesterday, the 60 are not released from today (60 + 5);
		// in the old format they are (60 - 60 + 5).
		want := int64(65)
		if body == "older window" {
			rdb.HSet(ctx, leases, rid, fmt.Sprintf("tokens|day|%d|60", start.Add(-24*time.Hour).Unix()))
		} else {
			rdb.HSet(ctx, leases, rid, "tokens|day|60")
			want = 5
		}
		if err := s.Settle(ctx, id, rid, []quota.Charge{{Resource: "tokens", Per: quota.Day, Limit: quota.NoLimit, Amount: 5}}); err != nil {
			t.Fatal(err)
		}
		if got := current(ctx, t, s, id, "tokens", quota.Day); got != want {
			t.Fatalf("%s: today's counter = %d, want %d", body, got, want)
		}
	}
}

// current reads one of a user's counters in its current window.
func current(ctx context.Context, t *testing.T, s *Store, id, resource string, per quota.Period) int64 {
	t.Helper()
	snap, err := s.Usage(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return snap.Current(resource, per)
}

// oneOfEach sends one request of each kind a tenant makes: a plain one,
// and one that holds a reservation and is settled for 3 tokens.
func oneOfEach(ctx context.Context, t *testing.T, s *Store, id string, plain, held []quota.Charge) {
	t.Helper()
	if _, err := s.Admit(ctx, id, quota.NewID(), plain); err != nil {
		t.Fatal(err)
	}
	rid := quota.NewID()
	if _, err := s.Admit(ctx, id, rid, held); err != nil {
		t.Fatal(err)
	}
	if err := s.Settle(ctx, id, rid, []quota.Charge{{Resource: "tokens", Limit: quota.NoLimit, Amount: 3}}); err != nil {
		t.Fatal(err)
	}
}

// TestNoKeyPerRequest: request records live in the user's record hashes
// (one per two minutes), so a tenant's traffic leaves a bounded number of keys
// (not one per request, as a record key each did); a held request whose
// record is gone still counts as admitted while its lease holds.
func TestNoKeyPerRequest(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := newStore(t, srv, Options{})
	ctx := testContext(t)
	rdb := srv.Client(t)
	id := quota.NewID()
	msg := []quota.Charge{{Resource: "messages", Limit: 100000, Amount: 1}}
	held := []quota.Charge{{Resource: "tokens", Limit: 100000, Amount: 10, Hold: time.Hour}}
	for i := 0; i < 300; i++ {
		oneOfEach(ctx, t, s, id, msg, held)
	}
	keys, err := rdb.Keys(ctx, "*"+id+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	// usage, leases and their expiries, and the records (two hashes when
	// the test crosses a two-minute span).
	if len(keys) > 6 {
		t.Fatalf("900 store calls left %d keys: %v", len(keys), keys)
	}
	// The records gone (as after four minutes), a held request is still
	// known as admitted by its lease: cancelling it takes it back once.
	rid := quota.NewID()
	if _, err := s.Admit(ctx, id, rid, held); err != nil {
		t.Fatal(err)
	}
	recs, _ := rdb.Keys(ctx, "*"+id+"*:reqs:*").Result()
	rdb.Del(ctx, recs...)
	if adm, err := s.Admit(ctx, id, rid, held); err != nil || adm.Used[0] != 910 {
		t.Fatalf("repeated admission of a leased request: %+v %v, want 910 used", adm, err)
	}
	if err := s.Resolve(ctx, id, rid, held, false); err != nil {
		t.Fatal(err)
	}
	if got := current(ctx, t, s, id, "tokens", quota.Lifetime); got != 900 {
		t.Fatalf("after cancelling the leased request: %d, want 900", got)
	}
}

// TestRecordsBounded: however many requests a tenant sends, its request
// records stay within three hashes of RecordsPerHash each; the recent ones
// still make admissions, settlements and cancels count exactly once.
func TestRecordsBounded(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	const perHash = 50
	s := newStore(t, srv, Options{RecordsPerHash: perHash})
	// 1,000 rounds of store calls: longer than testContext's 10s on a
	// machine running two suites.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rdb := srv.Client(t)
	id := quota.NewID()
	msg := []quota.Charge{{Resource: "messages", Limit: 1000000, Amount: 1}}
	held := []quota.Charge{{Resource: "tokens", Limit: 1000000, Amount: 10, Hold: time.Hour}}
	records := func() (n int64) {
		t.Helper()
		keys, err := rdb.Keys(ctx, "*"+id+"*:reqs:*").Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) > 3 {
			t.Fatalf("%d record hashes: %v", len(keys), keys)
		}
		for _, k := range keys {
			n += rdb.HLen(ctx, k).Val()
			if ttl := rdb.TTL(ctx, k).Val(); ttl <= 0 || ttl > 240*time.Second {
				t.Fatalf("record hash %s expires in %v", k, ttl)
			}
		}
		return n
	}
	var most int64
	for i := 0; i < 1000; i++ {
		oneOfEach(ctx, t, s, id, msg, held)
		if i%50 == 0 {
			most = max(most, records())
		}
	}
	if most = max(most, records()); most > 3*perHash {
		t.Fatalf("3,000 recorded requests left %d records, want at most %d", most, 3*perHash)
	}
	// The latest requests are still known: a repeated admission charges
	// nothing, a repeated settlement nothing, a cancel blocks a late
	// admission.
	rid := quota.NewID()
	if _, err := s.Admit(ctx, id, rid, msg); err != nil {
		t.Fatal(err)
	}
	if adm, err := s.Admit(ctx, id, rid, msg); err != nil || adm.Used[0] != 1001 {
		t.Fatalf("repeated admission: %+v %v, want 1001 used", adm, err)
	}
	settle := []quota.Charge{{Resource: "tokens", Limit: quota.NoLimit, Amount: 5}}
	if err := s.Settle(ctx, id, rid, settle); err != nil {
		t.Fatal(err)
	}
	if err := s.Settle(ctx, id, rid, settle); err != nil {
		t.Fatal(err)
	}
	late := quota.NewID()
	if err := s.Resolve(ctx, id, late, msg, false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Admit(ctx, id, late, msg); !errors.Is(err, quota.ErrCancelled) {
		t.Fatalf("late admission after a cancel: %v", err)
	}
	if m, tk := current(ctx, t, s, id, "messages", quota.Lifetime), current(ctx, t, s, id, "tokens", quota.Lifetime); m != 1001 || tk != 3005 {
		t.Fatalf("messages %d tokens %d, want 1001 and 3005", m, tk)
	}
	if _, err := New(Options{Client: rdb, RecordsPerHash: -1}); err == nil {
		t.Fatal("a negative RecordsPerHash was accepted")
	}
}

// TestDistinctKeysBounded: a tenant sending ever new keys (conversation
// ids it makes up) keeps at most DistinctKeys of them in Redis; past the
// cap a new key still counts (more, never less).
func TestDistinctKeysBounded(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	const capKeys = 40
	s := newStore(t, srv, Options{DistinctKeys: capKeys})
	ctx := testContext(t)
	rdb := srv.Client(t)
	id := quota.NewID()
	conv := func(key string) []quota.Charge {
		return []quota.Charge{
			{Resource: "conversations", Limit: quota.NoLimit, Amount: 1, Key: key},
			{Resource: "conversations", Per: quota.Day, Limit: quota.NoLimit, Amount: 1, Key: key},
		}
	}
	for i := 0; i < 100; i++ {
		if _, err := s.Admit(ctx, id, quota.NewID(), conv(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	if n := rdb.HLen(ctx, s.keysKey(id)).Val(); n != capKeys {
		t.Fatalf("100 new keys left %d in Redis, want the cap %d", n, capKeys)
	}
	// A remembered key counts once; one past the cap counts each time.
	for _, key := range []string{"0", "0", "99", "99"} {
		if _, err := s.Admit(ctx, id, quota.NewID(), conv(key)); err != nil {
			t.Fatal(err)
		}
	}
	if got := current(ctx, t, s, id, "conversations", quota.Lifetime); got != 102 {
		t.Fatalf("conversations %d, want 102", got)
	}
	if _, err := New(Options{Client: rdb, DistinctKeys: -1}); err == nil {
		t.Fatal("a negative DistinctKeys was accepted")
	}
}

// TestLeaseDue: an admission looks at the leases only when one is due
// (the usage hash's "~due"), and at least once a minute; every way a lease
// is taken keeps it due: an admission that holds, and a resolution that
// makes sure a held request counts. An expired lease is always released by
// the next admission.
func TestLeaseDue(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := newStore(t, srv, Options{})
	ctx := testContext(t)
	rdb := srv.Client(t)
	id := quota.NewID()
	msg := []quota.Charge{{Resource: "messages", Limit: 1000, Amount: 1}}
	held := func(hold time.Duration) []quota.Charge {
		return []quota.Charge{{Resource: "tokens", Limit: 1000, Amount: 100, Hold: hold}}
	}
	tokens := func() int64 { t.Helper(); return current(ctx, t, s, id, "tokens", quota.Lifetime) }
	// dueIn is how long until an admission looks at the leases again.
	dueIn := func() time.Duration {
		t.Helper()
		due, err := rdb.HGet(ctx, s.usageKey(id), "~due").Int64()
		if err != nil {
			t.Fatal(err)
		}
		return time.Unix(due, 0).Sub(rdb.Time(ctx).Val()).Round(time.Second)
	}
	if _, err := s.Admit(ctx, id, quota.NewID(), msg); err != nil {
		t.Fatal(err)
	}
	if d := dueIn(); d <= 0 || d > time.Minute {
		t.Fatalf("no lease: next look in %v, want within a minute", d)
	}
	// A lease of an hour changes nothing; one of a second brings it close.
	if _, err := s.Admit(ctx, id, quota.NewID(), held(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Admit(ctx, id, quota.NewID(), held(time.Second)); err != nil {
		t.Fatal(err)
	}
	if d := dueIn(); d > time.Second {
		t.Fatalf("after a 1 s lease: next look in %v", d)
	}
	time.Sleep(2100 * time.Millisecond)
	if _, err := s.Admit(ctx, id, quota.NewID(), msg); err != nil {
		t.Fatal(err)
	}
	if got := tokens(); got != 100 {
		t.Fatalf("after the 1 s lease expired: %d tokens, want 100 (the hour's lease)", got)
	}
	if d := dueIn(); d <= 0 || d > time.Minute {
		t.Fatalf("after the sweep: next look in %v, want within a minute", d)
	}
	// A lease taken by a resolution is due too.
	rid := quota.NewID()
	if err := s.Resolve(ctx, id, rid, held(time.Second), true); err != nil {
		t.Fatal(err)
	}
	if got := tokens(); got != 200 {
		t.Fatalf("after a forced admission: %d tokens, want 200", got)
	}
	time.Sleep(2100 * time.Millisecond)
	if _, err := s.Admit(ctx, id, quota.NewID(), msg); err != nil {
		t.Fatal(err)
	}
	if got := tokens(); got != 100 {
		t.Fatalf("after the forced admission's lease expired: %d tokens, want 100", got)
	}
	// A lease "~due" does not know of (taken by an older gateway) is
	// released at the next look; an unknown "~due" looks at once.
	rid = quota.NewID()
	if _, err := s.Admit(ctx, id, rid, held(time.Second)); err != nil {
		t.Fatal(err)
	}
	far := strconv.FormatInt(rdb.Time(ctx).Val().Add(time.Hour).Unix(), 10)
	rdb.HSet(ctx, s.usageKey(id), "~due", far)
	time.Sleep(2100 * time.Millisecond)
	if _, err := s.Admit(ctx, id, quota.NewID(), msg); err != nil {
		t.Fatal(err)
	}
	if got := tokens(); got != 200 {
		t.Fatalf("before the next look: %d tokens, want 200 (the lease not yet looked at)", got)
	}
	rdb.HDel(ctx, s.usageKey(id), "~due")
	if _, err := s.Admit(ctx, id, quota.NewID(), msg); err != nil {
		t.Fatal(err)
	}
	if got := tokens(); got != 100 {
		t.Fatalf("after an unknown next look: %d tokens, want 100", got)
	}
}

// TestBatchedAdmissions: concurrent admissions go out in shared pipelines,
// each with its own result and the cap exact; a script cache emptied under
// them (a restarted Redis) is filled again.
func TestBatchedAdmissions(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := newStore(t, srv, Options{})
	rdb := srv.Client(t)
	id := quota.NewID()
	const n, limit = 400, 250
	for round := 0; round < 2; round++ {
		if round == 1 {
			if err := rdb.ScriptFlush(context.Background()).Err(); err != nil {
				t.Fatal(err)
			}
			id = quota.NewID()
		}
		var allowed atomic.Int64
		var wg sync.WaitGroup
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				adm, err := s.Admit(testContext(t), id, quota.NewID(), []quota.Charge{{Resource: "messages", Limit: limit, Amount: 1}})
				if err != nil {
					t.Error(err)
					return
				}
				if adm.Allowed {
					allowed.Add(1)
				}
			}()
		}
		wg.Wait()
		if allowed.Load() != limit {
			t.Fatalf("round %d: %d admitted, want %d", round, allowed.Load(), limit)
		}
	}
	p, c := s.batch.pipelines.Load(), s.batch.calls.Load()
	if c != 2*n || p >= c {
		t.Fatalf("%d calls in %d pipelines: not coalesced", c, p)
	}
	t.Logf("%d calls in %d pipelines", c, p)
}

// TestDeletedUserLeavesNoKey: a request (or a headroom slice of another
// node) that settles after its user was deleted writes nothing: before,
// its settlement brought back a usage hash that nothing ever removed.
func TestDeletedUserLeavesNoKey(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := newStore(t, srv, Options{})
	u := createUser(t, s, "gone@example.com", "")
	rid := quota.NewID()
	ctx := testContext(t)
	if _, err := s.Admit(ctx, u.ID, rid, []quota.Charge{{Resource: "messages", Limit: 50, Amount: 20, Hold: time.Minute, Keep: true}}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteUser(ctx, u.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.Settle(ctx, u.ID, rid, []quota.Charge{{Resource: "messages", Limit: quota.NoLimit, Amount: 12}}); err != nil {
		t.Fatal(err)
	}
	// A node that has not heard of the delete yet is refused.
	if _, err := s.Admit(ctx, u.ID, quota.NewID(), []quota.Charge{{Resource: "messages", Limit: 50, Amount: 1}}); !errors.Is(err, quota.ErrUnauthenticated) {
		t.Fatalf("an admission after the delete: %v", err)
	}
	keys, err := srv.Client(t).Keys(ctx, "*"+u.ID+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		// Request records and the delete's tombstone expire by themselves.
		if ttl, _ := srv.Client(t).TTL(ctx, k).Result(); ttl < 0 || ttl > 24*time.Hour {
			t.Errorf("key %s left behind (ttl %v)", k, ttl)
		}
	}
}
