package boltstore_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tenantquota/caddy-tenant-quota/internal/testclock"
	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/boltstore"
)

func open(t *testing.T, opts boltstore.Options) *boltstore.Store {
	t.Helper()
	s, err := boltstore.Open(opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", opts.Path, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func dbPath(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "quota.db")
}

func mustClose(t *testing.T, s *boltstore.Store) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func createUser(t *testing.T, s *boltstore.Store, email, ext string) *quota.User {
	t.Helper()
	now := time.Now().UTC().Truncate(time.Millisecond)
	u := &quota.User{
		ID: quota.NewID(), Name: "User " + email, Email: email, ExternalID: ext,
		Status: quota.StatusActive, Limits: quota.Limits{"messages": {{Limit: 50}}},
		CreatedAt: now, UpdatedAt: now,
	}
	if err := s.CreateUser(context.Background(), u); err != nil {
		t.Fatalf("CreateUser(%s): %v", email, err)
	}
	return u
}

func createToken(t *testing.T, s *boltstore.Store, u *quota.User) *quota.Token {
	t.Helper()
	secret, err := quota.NewTokenSecret()
	if err != nil {
		t.Fatal(err)
	}
	tok := &quota.Token{
		ID: quota.NewID(), UserID: u.ID, Name: "t", Prefix: quota.TokenDisplayPrefix(secret),
		Hash: quota.HashTokenSecret(secret), CreatedAt: time.Now().UTC(),
	}
	if err := s.CreateToken(context.Background(), tok); err != nil {
		t.Fatalf("CreateToken: %v", err)
	}
	return tok
}

func admit(t *testing.T, s *boltstore.Store, userID string, charges ...quota.Charge) *quota.Admission {
	t.Helper()
	adm, err := s.Admit(context.Background(), userID, "", charges)
	if err != nil {
		t.Fatalf("Admit: %v", err)
	}
	return adm
}

func usage(t *testing.T, s *boltstore.Store, userID string) *quota.UsageSnapshot {
	t.Helper()
	snap, err := s.Usage(context.Background(), userID)
	if err != nil {
		t.Fatalf("Usage: %v", err)
	}
	return snap
}

// copyFile copies the database file of an open store, as a crash would
// leave it.
func copyFile(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "copy.db")
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

// usageOfCopy reads the lifetime messages counter of userID from a copy of
// the (still open) database at path.
func usageOfCopy(t *testing.T, path, userID string) (int64, error) {
	t.Helper()
	s, err := boltstore.Open(boltstore.Options{Path: copyFile(t, path)})
	if err != nil {
		return 0, err
	}
	defer s.Close()
	snap, err := s.Usage(context.Background(), userID)
	if err != nil {
		return 0, err
	}
	return snap.Current("messages", quota.Lifetime), nil
}

var messages = quota.Charge{Resource: "messages", Limit: 50, Amount: 1}

func TestOpenCreatesDirectoryAndFile(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "a", "b")
	path := filepath.Join(dir, "quota.db")
	s := open(t, boltstore.Options{Path: path})
	mustClose(t, s)
	for _, tc := range []struct {
		path string
		mode os.FileMode
	}{{dir, 0o700}, {path, 0o600}} {
		fi, err := os.Stat(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != tc.mode {
			t.Errorf("%s: mode %v, want %v", tc.path, got, tc.mode)
		}
	}
}

func TestOpenOptionsErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		opts boltstore.Options
		want string
	}{
		{"no path", boltstore.Options{}, "path is required"},
		{"negative interval", boltstore.Options{Path: dbPath(t), FlushInterval: -time.Second}, "must not be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := boltstore.Open(tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open: got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestSecondOpenFailsWithLockedError(t *testing.T) {
	t.Parallel()
	path := dbPath(t)
	open(t, boltstore.Options{Path: path})
	_, err := boltstore.Open(boltstore.Options{Path: path})
	if err == nil || !strings.Contains(err.Error(), "is locked by another process") {
		t.Fatalf("second Open: got %v, want a locked-file error", err)
	}
}

func TestDataSurvivesReopen(t *testing.T) {
	t.Parallel()
	path := dbPath(t)
	clock := testclock.At(time.Date(2025, 3, 10, 12, 0, 0, 0, time.UTC))
	s := open(t, boltstore.Options{Path: path, Clock: clock})
	ctx := context.Background()
	u := createUser(t, s, "a@example.com", "ext-a")
	tok := createToken(t, s, u)
	used := time.Date(2025, 3, 10, 11, 0, 0, 0, time.UTC)
	if err := s.TouchTokens(ctx, map[string]time.Time{tok.Hash: used}); err != nil {
		t.Fatal(err)
	}
	admit(t, s, u.ID, quota.Charge{Resource: "messages", Limit: 50, Amount: 3},
		quota.Charge{Resource: "tokens", Per: quota.Month, Limit: quota.NoLimit, Amount: 1200})
	mustClose(t, s)

	s = open(t, boltstore.Options{Path: path, Clock: clock})
	if got, err := s.GetUser(ctx, u.ID); err != nil || got.Email != u.Email {
		t.Fatalf("GetUser after reopen: %+v %v", got, err)
	}
	if got, err := s.GetUserByEmail(ctx, "A@Example.com"); err != nil || got.ID != u.ID {
		t.Fatalf("GetUserByEmail after reopen: %+v %v", got, err)
	}
	if got, err := s.GetUserByExternalID(ctx, "ext-a"); err != nil || got.ID != u.ID {
		t.Fatalf("GetUserByExternalID after reopen: %+v %v", got, err)
	}
	got, err := s.GetTokenByHash(ctx, tok.Hash)
	if err != nil || got.ID != tok.ID || got.LastUsedAt == nil || !got.LastUsedAt.Equal(used) {
		t.Fatalf("GetTokenByHash after reopen: %+v %v", got, err)
	}
	if list, err := s.ListTokens(ctx, u.ID); err != nil || len(list) != 1 {
		t.Fatalf("ListTokens after reopen: %v %v", list, err)
	}
	snap := usage(t, s, u.ID)
	if snap.Current("messages", quota.Lifetime) != 3 || snap.Current("tokens", quota.Month) != 1200 {
		t.Fatalf("usage after reopen: %+v", snap)
	}
	dup := u.Clone()
	dup.ID = quota.NewID()
	dup.ExternalID = ""
	err = s.CreateUser(ctx, dup)
	if !errors.Is(err, quota.ErrConflict) || !strings.Contains(err.Error(), "email already in use") {
		t.Fatalf("duplicate email after reopen: %v", err)
	}
}

func TestBackgroundFlushSurvivesCrash(t *testing.T) {
	t.Parallel()
	path := dbPath(t)
	s := open(t, boltstore.Options{Path: path, FlushInterval: 10 * time.Millisecond})
	u := createUser(t, s, "a@example.com", "")
	for i := 0; i < 7; i++ {
		admit(t, s, u.ID, messages)
	}
	// The store stays open: only the background flusher can have written
	// the counter when a copy of the file shows it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := usageOfCopy(t, path, u.ID)
		if err == nil && got == 7 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the flusher never wrote the counter: last read %d, %v", got, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFlushAndResetAreWrittenThrough(t *testing.T) {
	t.Parallel()
	path := dbPath(t)
	// No background flush during the test: every write below is explicit.
	s := open(t, boltstore.Options{Path: path, FlushInterval: time.Hour})
	u := createUser(t, s, "a@example.com", "")
	for i := 0; i < 5; i++ {
		admit(t, s, u.ID, messages)
	}
	if got, err := usageOfCopy(t, path, u.ID); err != nil || got != 0 {
		t.Fatalf("before Flush the file holds %d, %v; want 0", got, err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if got, err := usageOfCopy(t, path, u.ID); err != nil || got != 5 {
		t.Fatalf("after Flush the file holds %d, %v; want 5", got, err)
	}
	if err := s.ResetUsage(context.Background(), u.ID, []string{"messages"}); err != nil {
		t.Fatal(err)
	}
	if got, err := usageOfCopy(t, path, u.ID); err != nil || got != 0 {
		t.Fatalf("after ResetUsage the file holds %d, %v; want 0", got, err)
	}
}

func TestConcurrentAdmissionSurvivesReopen(t *testing.T) {
	t.Parallel()
	path := dbPath(t)
	s := open(t, boltstore.Options{Path: path, FlushInterval: time.Millisecond})
	u := createUser(t, s, "a@example.com", "")
	const n, limit = 200, 50
	var allowed atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			adm, err := s.Admit(context.Background(), u.ID, "", []quota.Charge{messages})
			if err != nil {
				t.Error(err)
				return
			}
			if adm.Allowed {
				allowed.Add(1)
			}
		}()
	}
	close(start)
	wg.Wait()
	if allowed.Load() != limit {
		t.Fatalf("%d of %d admitted against a cap of %d", allowed.Load(), n, limit)
	}
	if got := usage(t, s, u.ID).Current("messages", quota.Lifetime); got != limit {
		t.Fatalf("counter = %d, want %d", got, limit)
	}
	mustClose(t, s)

	s = open(t, boltstore.Options{Path: path})
	if got := usage(t, s, u.ID).Current("messages", quota.Lifetime); got != limit {
		t.Fatalf("counter after reopen = %d, want %d", got, limit)
	}
	if adm := admit(t, s, u.ID, messages); adm.Allowed {
		t.Fatal("admitted over the cap after reopen")
	}
}

func TestWindowRollover(t *testing.T) {
	t.Parallel()
	path := dbPath(t)
	clock := &testclock.Clock{}
	s := open(t, boltstore.Options{Path: path, Clock: clock})
	u := createUser(t, s, "a@example.com", "")
	perMinute := quota.Charge{Resource: "messages", Per: quota.Minute, Limit: 2, Amount: 1}
	perMonth := quota.Charge{Resource: "messages", Per: quota.Month, Limit: 3, Amount: 1}
	steps := []struct {
		at          string
		reopen      bool
		allowed     bool
		denied      int
		minute, mon int64
	}{
		{at: "2025-01-31T23:58:10Z", allowed: true, denied: -1, minute: 1, mon: 1},
		{at: "2025-01-31T23:58:59Z", allowed: true, denied: -1, minute: 2, mon: 2},
		{at: "2025-01-31T23:58:59.9Z", allowed: false, denied: 0, minute: 2, mon: 2},
		// A new minute: the minute counter starts over, the month does not.
		{at: "2025-01-31T23:59:00Z", allowed: true, denied: -1, minute: 1, mon: 3},
		{at: "2025-01-31T23:59:30Z", reopen: true, allowed: false, denied: 1, minute: 1, mon: 3},
		// A new month (and minute): both start over, also after a reopen.
		{at: "2025-02-01T00:00:00Z", reopen: true, allowed: true, denied: -1, minute: 1, mon: 1},
		{at: "2025-02-28T23:59:59Z", allowed: true, denied: -1, minute: 1, mon: 2},
		{at: "2025-03-01T00:00:00Z", allowed: true, denied: -1, minute: 1, mon: 1},
	}
	for i, st := range steps {
		now, err := time.Parse(time.RFC3339Nano, st.at)
		if err != nil {
			t.Fatal(err)
		}
		clock.Set(now)
		if st.reopen {
			mustClose(t, s)
			s = open(t, boltstore.Options{Path: path, Clock: clock})
		}
		adm := admit(t, s, u.ID, perMinute, perMonth)
		if adm.Allowed != st.allowed || adm.Denied != st.denied || !adm.Now.Equal(now) {
			t.Fatalf("step %d (%s): %+v, want allowed=%v denied=%d", i, st.at, adm, st.allowed, st.denied)
		}
		snap := usage(t, s, u.ID)
		if !snap.Now.Equal(now) {
			t.Fatalf("step %d: usage time %v, want %v", i, snap.Now, now)
		}
		if got := snap.Current("messages", quota.Minute); got != st.minute {
			t.Fatalf("step %d (%s): minute counter %d, want %d", i, st.at, got, st.minute)
		}
		if got := snap.Current("messages", quota.Month); got != st.mon {
			t.Fatalf("step %d (%s): month counter %d, want %d", i, st.at, got, st.mon)
		}
	}
	// Without a charge, an old window reads as zero.
	clock.Set(time.Date(2025, 4, 2, 0, 0, 0, 0, time.UTC))
	if snap := usage(t, s, u.ID); snap.Current("messages", quota.Month) != 0 || snap.Current("messages", quota.Minute) != 0 {
		t.Fatalf("stale windows read as current: %+v", snap)
	}
}

func TestDeleteUserIsNotResurrectedByFlush(t *testing.T) {
	t.Parallel()
	path := dbPath(t)
	s := open(t, boltstore.Options{Path: path, FlushInterval: time.Millisecond})
	u := createUser(t, s, "a@example.com", "")
	createToken(t, s, u)
	admit(t, s, u.ID, messages)
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	// Admissions keep racing the delete and the flusher; whatever they
	// count, none of it may reach the file for a user that is gone.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				// Once the delete is done, they are refused.
				if _, err := s.Admit(context.Background(), u.ID, "", []quota.Charge{{Resource: "messages", Limit: quota.NoLimit, Amount: 1}}); err != nil && !errors.Is(err, quota.ErrUnauthenticated) {
					t.Error(err)
					return
				}
			}
		}()
	}
	time.Sleep(5 * time.Millisecond)
	if err := s.DeleteUser(context.Background(), u.ID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	cancel()
	wg.Wait()
	mustClose(t, s)

	s = open(t, boltstore.Options{Path: path})
	if snap := usage(t, s, u.ID); len(snap.Counters) != 0 {
		t.Fatalf("a deleted user's counters came back: %+v", snap)
	}
	if users, _, err := s.ListUsers(context.Background(), "", 10); err != nil || len(users) != 0 {
		t.Fatalf("users after delete: %v %v", users, err)
	}
}

func TestListTokensOfUnknownUser(t *testing.T) {
	t.Parallel()
	s := open(t, boltstore.Options{Path: dbPath(t)})
	if _, err := s.ListTokens(context.Background(), "nope"); !errors.Is(err, quota.ErrNotFound) {
		t.Fatalf("ListTokens(unknown): got %v, want ErrNotFound", err)
	}
}

func TestTouchTokensNeverMovesBack(t *testing.T) {
	t.Parallel()
	s := open(t, boltstore.Options{Path: dbPath(t)})
	u := createUser(t, s, "a@example.com", "")
	tok := createToken(t, s, u)
	ctx := context.Background()
	later := time.Date(2025, 1, 2, 0, 0, 0, 0, time.UTC)
	for _, at := range []time.Time{later, later.Add(-time.Hour)} {
		if err := s.TouchTokens(ctx, map[string]time.Time{tok.Hash: at}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.GetTokenByHash(ctx, tok.Hash)
	if err != nil || got.LastUsedAt == nil || !got.LastUsedAt.Equal(later) {
		t.Fatalf("LastUsedAt = %v, %v; want %v", got.LastUsedAt, err, later)
	}
}

func TestClosedStore(t *testing.T) {
	t.Parallel()
	s := open(t, boltstore.Options{Path: dbPath(t)})
	u := createUser(t, s, "a@example.com", "")
	mustClose(t, s)
	mustClose(t, s) // idempotent
	ctx := context.Background()
	if _, err := s.Admit(ctx, u.ID, "", []quota.Charge{messages}); !errors.Is(err, boltstore.ErrClosed) {
		t.Errorf("Admit after Close: %v", err)
	}
	if _, err := s.GetUser(ctx, u.ID); !errors.Is(err, boltstore.ErrClosed) {
		t.Errorf("GetUser after Close: %v", err)
	}
	if err := s.Flush(); !errors.Is(err, boltstore.ErrClosed) {
		t.Errorf("Flush after Close: %v", err)
	}
}

func TestCanceledContext(t *testing.T) {
	t.Parallel()
	s := open(t, boltstore.Options{Path: dbPath(t)})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Admit(ctx, quota.NewID(), "", []quota.Charge{messages}); !errors.Is(err, context.Canceled) {
		t.Errorf("Admit: %v", err)
	}
	if _, err := s.GetUser(ctx, "x"); !errors.Is(err, context.Canceled) {
		t.Errorf("GetUser: %v", err)
	}
}

// TestDistinctKeysSurviveReopen: the keys of distinct charges are written
// with the counters, and counters in the first file format still load.
func TestDistinctKeysSurviveReopen(t *testing.T) {
	t.Parallel()
	path := dbPath(t)
	s := open(t, boltstore.Options{Path: path})
	u := createUser(t, s, "k@example.com", "")
	conv := quota.Charge{Resource: "conversations", Limit: 5, Amount: 1, Key: "c1"}
	if adm, err := s.Admit(context.Background(), u.ID, "", []quota.Charge{conv}); err != nil || adm.Used[0] != 1 {
		t.Fatalf("admit: %+v %v", adm, err)
	}
	mustClose(t, s)

	s = open(t, boltstore.Options{Path: path})
	if adm, err := s.Admit(context.Background(), u.ID, "", []quota.Charge{conv}); err != nil || adm.Used[0] != 1 {
		t.Fatalf("a counted key counted again after reopening: %+v %v", adm, err)
	}
	mustClose(t, s)

	// The first format: the bare counters map.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	old := `{"messages|lifetime":{"start":"0001-01-01T00:00:00Z","used":7}}`
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("counters")).Put([]byte(u.ID), []byte(old))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s = open(t, boltstore.Options{Path: path})
	snap, err := s.Usage(context.Background(), u.ID)
	if err != nil || snap.Current("messages", quota.Lifetime) != 7 {
		t.Fatalf("old-format counters: %+v %v", snap, err)
	}
}

// TestLeaseReleasesOnlyItsWindow: a reservation held across the end of a
// window is not released from the next window, which never held it (a
// tenant could otherwise start long requests just before a window ends
// and get their reservations back as free room in the next); it survives
// a reopen with its window.
func TestLeaseReleasesOnlyItsWindow(t *testing.T) {
	t.Parallel()
	for _, reopen := range []bool{false, true} {
		t.Run(fmt.Sprint("reopen=", reopen), func(t *testing.T) { testLeaseWindow(t, reopen) })
	}
}

func testLeaseWindow(t *testing.T, reopen bool) {
	path := dbPath(t)
	clock := testclock.At(time.Date(2025, 3, 10, 12, 0, 50, 0, time.UTC))
	s := open(t, boltstore.Options{Path: path, Clock: clock})
	ctx := context.Background()
	id := quota.NewID()
	rid := quota.NewID()
	held := quota.Charge{Resource: "tokens", Per: quota.Minute, Limit: 100, Amount: 60, Hold: time.Hour}
	if adm, err := s.Admit(ctx, id, rid, []quota.Charge{held}); err != nil || !adm.Allowed {
		t.Fatalf("reserve: %+v %v", adm, err)
	}
	if reopen {
		mustClose(t, s)
		s = open(t, boltstore.Options{Path: path, Clock: clock})
	}
	clock.Set(clock.Now().Add(20 * time.Second)) // the next minute
	admit(t, s, id, quota.Charge{Resource: "tokens", Per: quota.Minute, Limit: 100, Amount: 30})
	if err := s.Settle(ctx, id, rid, []quota.Charge{{Resource: "tokens", Per: quota.Minute, Limit: quota.NoLimit, Amount: 5}}); err != nil {
		t.Fatal(err)
	}
	snap, err := s.Usage(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	// 30 admitted in this minute and the 5 settled; the 60 held in the
	// last minute stay there.
	if got := snap.Current("tokens", quota.Minute); got != 35 {
		t.Fatalf("this minute's counter = %d, want 35", got)
	}
}

// TestDistinctKeysBounded: a user keeps at most DistinctKeys keys, as on
// Redis: a tenant sending new conversation ids without end cannot grow
// its data (in memory and on disk) without end; a remembered key counts
// once, one past the cap each time.
func TestDistinctKeysBounded(t *testing.T) {
	t.Parallel()
	const capKeys = 40
	s := open(t, boltstore.Options{Path: filepath.Join(t.TempDir(), "q.db"), DistinctKeys: capKeys})
	ctx := context.Background()
	id := quota.NewID()
	conv := func(key string) []quota.Charge {
		return []quota.Charge{
			{Resource: "conversations", Limit: quota.NoLimit, Amount: 1, Key: key},
			{Resource: "conversations", Per: quota.Day, Limit: quota.NoLimit, Amount: 1, Key: key},
		}
	}
	for i := range 100 {
		if _, err := s.Admit(ctx, id, "", conv(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	for _, key := range []string{"0", "0", "99", "99"} {
		if _, err := s.Admit(ctx, id, "", conv(key)); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := s.Usage(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if got := snap.Current("conversations", quota.Lifetime); got != 102 {
		t.Fatalf("conversations %d, want 102 (key 0 remembered, 99 past the cap)", got)
	}
	if _, err := boltstore.Open(boltstore.Options{Path: filepath.Join(t.TempDir(), "x.db"), DistinctKeys: -1}); err == nil {
		t.Fatal("a negative DistinctKeys was accepted")
	}
}
