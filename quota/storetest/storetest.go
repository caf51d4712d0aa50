// Package storetest is the conformance suite that every quota.Store must
// pass. It talks to a store only through the quota.Store interface and must
// not import any store implementation.
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// Thresholds are the usage.threshold percentages the stores under test
// must be made with.
var Thresholds = []int64{80, 100}

// Run runs every conformance test against fresh stores made by newStore,
// the tests side by side (t.Parallel). newStore must return an empty store
// that shares no state with the others it returns (its own file, or its
// own key prefix on a shared Redis) and arrange its cleanup with
// t.Cleanup.
func Run(t *testing.T, newStore func(t *testing.T) quota.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s quota.Store)
	}{
		{"UserCRUD", testUserCRUD},
		{"UniqueEmailAndExternalID", testUnique},
		{"UpdateMovesIndexes", testUpdateIndexes},
		{"ListUsersPagination", testList},
		{"Tokens", testTokens},
		{"UpdateToken", testUpdateToken},
		{"ConcurrentTokenUpdates", testConcurrentTokenUpdates},
		{"RevokedTokenCountersGo", testRevokedTokenCounters},
		{"DeleteUserRemovesEverything", testDeleteUser},
		{"AdmitLifetimeCap", testAdmitCap},
		{"AdmitIsAllOrNothing", testAdmitAllOrNothing},
		{"AdmitNegativeNeverBelowZero", testAdmitNegative},
		{"AdmitWindowsAreSeparate", testAdmitWindows},
		{"UsageAndReset", testUsageReset},
		{"ConcurrentAdmissionIsExact", testConcurrentAdmit},
		{"RequestIDsAndResolve", testRequestIDs},
		{"DistinctKeys", testDistinctKeys},
		{"ReservationLeases", testLeases},
		{"KeptLeasesStayCounted", testKeptLeases},
		{"ResetKeepsWhatInFlightRequestsHold", testResetKeepsHolds},
		{"UpdateUserCompareAndSwap", testUpdateCAS},
		{"ConcurrentAdminWrites", testConcurrentAdminWrites},
		{"CountersSaturate", testCountersSaturate},
		{"Outbox", testOutbox},
		{"EventPolling", testEventPolling},
		{"StartSink", testStartSink},
		{"ThresholdsFireOnce", testThresholds},
		{"ResetTokenCounters", testResetTokenCounters},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, newStore(t))
		})
	}
}

func ctx(t *testing.T) context.Context {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func newUser(t *testing.T, s quota.Store, email, ext string) *quota.User {
	t.Helper()
	now := time.Now().UTC().Truncate(time.Millisecond)
	u := &quota.User{
		ID: quota.NewID(), Name: "User " + email, Email: email, ExternalID: ext,
		Status: quota.StatusActive, Credits: 7,
		Limits:    quota.Limits{"messages": {{Limit: 10}}, "tokens": {{Limit: 100, Per: quota.Day}}},
		CreatedAt: now, UpdatedAt: now,
	}
	if err := s.CreateUser(ctx(t), u); err != nil {
		t.Fatalf("CreateUser(%s): %v", email, err)
	}
	return u
}

func mustNotFound(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, quota.ErrNotFound) {
		t.Fatalf("%s: want ErrNotFound, got %v", what, err)
	}
}

func sameUser(t *testing.T, got, want *quota.User) {
	t.Helper()
	if got.ID != want.ID || got.Name != want.Name || got.Email != want.Email ||
		got.ExternalID != want.ExternalID || got.Status != want.Status || got.Credits != want.Credits ||
		!got.CreatedAt.Equal(want.CreatedAt) || !got.UpdatedAt.Equal(want.UpdatedAt) {
		t.Fatalf("user mismatch:\n got %+v\nwant %+v", got, want)
	}
	gl, _ := got.Limits.MarshalJSON()
	wl, _ := want.Limits.MarshalJSON()
	if string(gl) != string(wl) {
		t.Fatalf("limits mismatch: got %s want %s", gl, wl)
	}
}

func testUserCRUD(t *testing.T, s quota.Store) {
	u := newUser(t, s, "a@example.com", "ext-a")
	got, err := s.GetUser(ctx(t), u.ID)
	if err != nil {
		t.Fatal(err)
	}
	sameUser(t, got, u)
	got, err = s.GetUserByEmail(ctx(t), "a@example.com")
	if err != nil {
		t.Fatal(err)
	}
	sameUser(t, got, u)
	got, err = s.GetUserByExternalID(ctx(t), "ext-a")
	if err != nil {
		t.Fatal(err)
	}
	sameUser(t, got, u)

	u.Name = "Renamed"
	u.Status = quota.StatusDisabled
	u.Limits = quota.Limits{"files": {{Limit: 3}, {Limit: 1, Per: quota.Minute}}}
	u.UpdatedAt = u.UpdatedAt.Add(time.Second)
	u.Revision++
	if err := s.UpdateUser(ctx(t), u); err != nil {
		t.Fatal(err)
	}
	got, _ = s.GetUser(ctx(t), u.ID)
	sameUser(t, got, u)

	_, err = s.GetUser(ctx(t), "nope")
	mustNotFound(t, "GetUser unknown", err)
	_, err = s.GetUserByEmail(ctx(t), "nobody@example.com")
	mustNotFound(t, "GetUserByEmail unknown", err)
	_, err = s.GetUserByExternalID(ctx(t), "nope")
	mustNotFound(t, "GetUserByExternalID unknown", err)
	ghost := u.Clone()
	ghost.ID = quota.NewID()
	ghost.Email = "ghost@example.com"
	ghost.ExternalID = ""
	mustNotFound(t, "UpdateUser unknown", s.UpdateUser(ctx(t), ghost))
	mustNotFound(t, "DeleteUser unknown", s.DeleteUser(ctx(t), "nope"))
}

func testUnique(t *testing.T, s quota.Store) {
	a := newUser(t, s, "a@example.com", "ext-a")
	dup := a.Clone()
	dup.ID = quota.NewID()
	dup.ExternalID = "ext-other"
	if err := s.CreateUser(ctx(t), dup); !errors.Is(err, quota.ErrConflict) {
		t.Fatalf("duplicate email: want ErrConflict, got %v", err)
	}
	dup.Email = "other@example.com"
	dup.ExternalID = "ext-a"
	if err := s.CreateUser(ctx(t), dup); !errors.Is(err, quota.ErrConflict) {
		t.Fatalf("duplicate external id: want ErrConflict, got %v", err)
	}
	// A failed create must not hold on to the email it did not get to use.
	dup.ExternalID = "ext-b"
	if err := s.CreateUser(ctx(t), dup); err != nil {
		t.Fatalf("create after conflicts: %v", err)
	}
	// Users without an external id do not collide with each other.
	newUser(t, s, "c@example.com", "")
	newUser(t, s, "d@example.com", "")
	b, _ := s.GetUser(ctx(t), dup.ID)
	b.Email = "a@example.com"
	b.Revision++
	if err := s.UpdateUser(ctx(t), b); !errors.Is(err, quota.ErrConflict) {
		t.Fatalf("update to taken email: want ErrConflict, got %v", err)
	}
	b, _ = s.GetUser(ctx(t), dup.ID)
	if b.Email != "other@example.com" {
		t.Fatalf("failed update changed the email to %q", b.Email)
	}
}

func testUpdateIndexes(t *testing.T, s quota.Store) {
	u := newUser(t, s, "old@example.com", "old-ext")
	u.Email = "new@example.com"
	u.ExternalID = "new-ext"
	u.Revision++
	if err := s.UpdateUser(ctx(t), u); err != nil {
		t.Fatal(err)
	}
	_, err := s.GetUserByEmail(ctx(t), "old@example.com")
	mustNotFound(t, "old email", err)
	_, err = s.GetUserByExternalID(ctx(t), "old-ext")
	mustNotFound(t, "old external id", err)
	if got, err := s.GetUserByEmail(ctx(t), "new@example.com"); err != nil || got.ID != u.ID {
		t.Fatalf("new email lookup: %v %v", got, err)
	}
	if got, err := s.GetUserByExternalID(ctx(t), "new-ext"); err != nil || got.ID != u.ID {
		t.Fatalf("new external id lookup: %v %v", got, err)
	}
	// The old values are free again.
	newUser(t, s, "old@example.com", "old-ext")
	// Clearing the external id frees it.
	u.ExternalID = ""
	u.Revision++
	if err := s.UpdateUser(ctx(t), u); err != nil {
		t.Fatal(err)
	}
	_, err = s.GetUserByExternalID(ctx(t), "new-ext")
	mustNotFound(t, "cleared external id", err)
}

func testList(t *testing.T, s quota.Store) {
	users, more, err := s.ListUsers(ctx(t), "", 10)
	if err != nil || len(users) != 0 || more {
		t.Fatalf("empty list: %v %v %v", users, more, err)
	}
	var ids []string
	for i := 0; i < 7; i++ {
		ids = append(ids, newUser(t, s, fmt.Sprintf("u%d@example.com", i), "").ID)
	}
	var got []string
	after := ""
	pages := 0
	for {
		page, more, err := s.ListUsers(ctx(t), after, 3)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, u := range page {
			got = append(got, u.ID)
		}
		if !more {
			break
		}
		if len(page) != 3 {
			t.Fatalf("a page with more after it has %d users, want 3", len(page))
		}
		after = page[len(page)-1].ID
	}
	if pages != 3 || fmt.Sprint(got) != fmt.Sprint(ids) {
		t.Fatalf("pagination: %d pages, ids %v, want %v", pages, got, ids)
	}
	page, more, err := s.ListUsers(ctx(t), ids[5], 2)
	if err != nil || more || len(page) != 1 || page[0].ID != ids[6] {
		t.Fatalf("last page: %v %v %v", page, more, err)
	}
}

func newToken(t *testing.T, s quota.Store, u *quota.User, name string) *quota.Token {
	t.Helper()
	secret, err := quota.NewTokenSecret()
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Now().UTC().Add(time.Hour).Truncate(time.Millisecond)
	tok := &quota.Token{
		ID: quota.NewID(), UserID: u.ID, Name: name, Prefix: quota.TokenDisplayPrefix(secret),
		Hash: quota.HashTokenSecret(secret), CreatedAt: time.Now().UTC().Truncate(time.Millisecond), ExpiresAt: &exp,
	}
	if err := s.CreateToken(ctx(t), tok); err != nil {
		t.Fatalf("CreateToken: %v", err)
	}
	return tok
}

func testTokens(t *testing.T, s quota.Store) {
	u := newUser(t, s, "a@example.com", "")
	t1 := newToken(t, s, u, "one")
	t2 := newToken(t, s, u, "two")
	got, err := s.GetTokenByHash(ctx(t), t1.Hash)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != t1.ID || got.UserID != u.ID || got.Name != "one" || got.Prefix != t1.Prefix ||
		got.ExpiresAt == nil || !got.ExpiresAt.Equal(*t1.ExpiresAt) || !got.CreatedAt.Equal(t1.CreatedAt) {
		t.Fatalf("token mismatch: %+v vs %+v", got, t1)
	}
	list, err := s.ListTokens(ctx(t), u.ID)
	if err != nil || len(list) != 2 || list[0].ID != t1.ID || list[1].ID != t2.ID {
		t.Fatalf("ListTokens: %v %v", list, err)
	}
	used := time.Now().UTC().Truncate(time.Millisecond)
	if err := s.TouchTokens(ctx(t), map[string]time.Time{t2.Hash: used, "0000": used}); err != nil {
		t.Fatal(err)
	}
	got, _ = s.GetTokenByHash(ctx(t), t2.Hash)
	if got.LastUsedAt == nil || !got.LastUsedAt.Equal(used) {
		t.Fatalf("lastUsedAt after touch: %v", got.LastUsedAt)
	}
	list, _ = s.ListTokens(ctx(t), u.ID)
	if list[1].LastUsedAt == nil || !list[1].LastUsedAt.Equal(used) {
		t.Fatalf("listed lastUsedAt after touch: %v", list[1].LastUsedAt)
	}
	// A last-used time never moves back (Token.Touch).
	if err := s.TouchTokens(ctx(t), map[string]time.Time{t2.Hash: used.Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if got, _ = s.GetTokenByHash(ctx(t), t2.Hash); got.LastUsedAt == nil || !got.LastUsedAt.Equal(used) {
		t.Fatalf("lastUsedAt after an older touch: %v, want %v", got.LastUsedAt, used)
	}
	del, err := s.DeleteToken(ctx(t), u.ID, t1.ID)
	if err != nil || del.ID != t1.ID || del.Hash != t1.Hash {
		t.Fatalf("DeleteToken: %+v %v", del, err)
	}
	_, err = s.GetTokenByHash(ctx(t), t1.Hash)
	mustNotFound(t, "revoked token", err)
	_, err = s.DeleteToken(ctx(t), u.ID, t1.ID)
	mustNotFound(t, "revoke twice", err)
	other := newUser(t, s, "b@example.com", "")
	_, err = s.DeleteToken(ctx(t), other.ID, t2.ID)
	mustNotFound(t, "revoke another user's token", err)
	if err := s.TouchTokens(ctx(t), map[string]time.Time{t1.Hash: used}); err != nil {
		t.Fatal(err)
	}
	_, err = s.GetTokenByHash(ctx(t), t1.Hash)
	mustNotFound(t, "touch must not resurrect a revoked token", err)
	ghost := &quota.Token{ID: quota.NewID(), UserID: "nope", Name: "x", Hash: "ab", CreatedAt: time.Now()}
	mustNotFound(t, "token for unknown user", s.CreateToken(ctx(t), ghost))
	list, err = s.ListTokens(ctx(t), other.ID)
	if err != nil || len(list) != 0 {
		t.Fatalf("empty ListTokens: %v %v", list, err)
	}
}

func testDeleteUser(t *testing.T, s quota.Store) {
	u := newUser(t, s, "a@example.com", "ext-a")
	tok := newToken(t, s, u, "one")
	if adm, err := s.Admit(ctx(t), u.ID, "", []quota.Charge{{Resource: "messages", Limit: 10, Amount: 3}}); err != nil || !adm.Allowed {
		t.Fatalf("Admit: %+v %v", adm, err)
	}
	inFlight := quota.NewID()
	if adm, err := s.Admit(ctx(t), u.ID, inFlight, []quota.Charge{{Resource: "tokens", Limit: 1000, Amount: 500, Hold: time.Minute, Keep: true}}); err != nil || !adm.Allowed {
		t.Fatalf("Admit: %+v %v", adm, err)
	}
	if err := s.DeleteUser(ctx(t), u.ID); err != nil {
		t.Fatal(err)
	}
	// A request in flight settles late, a node that has not heard of the
	// delete admits: neither brings back anything of the user.
	if err := s.Settle(ctx(t), u.ID, inFlight, []quota.Charge{{Resource: "tokens", Limit: quota.NoLimit, Amount: 40}}); err != nil {
		t.Fatalf("a late settlement: %v", err)
	}
	if err := s.Resolve(ctx(t), u.ID, quota.NewID(), []quota.Charge{{Resource: "messages", Limit: quota.NoLimit, Amount: 1}}, true); err != nil {
		t.Fatalf("a late forced resolution: %v", err)
	}
	if _, err := s.Admit(ctx(t), u.ID, quota.NewID(), []quota.Charge{{Resource: "messages", Limit: 10, Amount: 1}}); !errors.Is(err, quota.ErrUnauthenticated) {
		t.Fatalf("an admission of the deleted user: %v, want ErrUnauthenticated", err)
	}
	flush(s)
	_, err := s.GetUser(ctx(t), u.ID)
	mustNotFound(t, "deleted user", err)
	_, err = s.GetTokenByHash(ctx(t), tok.Hash)
	mustNotFound(t, "deleted user's token", err)
	_, err = s.GetUserByEmail(ctx(t), "a@example.com")
	mustNotFound(t, "deleted user's email", err)
	users, _, _ := s.ListUsers(ctx(t), "", 10)
	if len(users) != 0 {
		t.Fatalf("deleted user still listed")
	}
	snap, err := s.Usage(ctx(t), u.ID)
	if err != nil || len(snap.Counters) != 0 {
		t.Fatalf("deleted user's counters: %+v %v", snap, err)
	}
	// The same email and external id can be used again.
	newUser(t, s, "a@example.com", "ext-a")
}

func admit(t *testing.T, s quota.Store, userID string, charges ...quota.Charge) *quota.Admission {
	t.Helper()
	adm, err := s.Admit(ctx(t), userID, "", charges)
	if err != nil {
		t.Fatalf("Admit: %v", err)
	}
	if len(adm.Used) != len(charges) {
		t.Fatalf("Admit returned %d used values for %d charges", len(adm.Used), len(charges))
	}
	if adm.Now.IsZero() || time.Since(adm.Now).Abs() > time.Minute {
		t.Fatalf("Admit returned store time %v", adm.Now)
	}
	return adm
}

func testAdmitCap(t *testing.T, s quota.Store) {
	u := quota.NewID()
	steps := []struct {
		amount, limit int64
		allowed       bool
		used          int64
	}{
		{1, 3, true, 1},
		{1, 3, true, 2},
		{1, 3, true, 3},
		{1, 3, false, 3},
		{1, 4, true, 4},  // the limit was raised
		{5, 4, false, 4}, // lowered limits hold
		{0, 4, true, 4},
		{2, quota.NoLimit, true, 6},
	}
	for i, st := range steps {
		adm := admit(t, s, u, quota.Charge{Resource: "messages", Limit: st.limit, Amount: st.amount})
		if adm.Allowed != st.allowed || adm.Used[0] != st.used {
			t.Fatalf("step %d: allowed=%v used=%d, want %v %d", i, adm.Allowed, adm.Used[0], st.allowed, st.used)
		}
		if !st.allowed && adm.Denied != 0 {
			t.Fatalf("step %d: denied index %d", i, adm.Denied)
		}
		if st.allowed && adm.Denied != -1 {
			t.Fatalf("step %d: allowed but denied index %d", i, adm.Denied)
		}
	}
}

func testAdmitAllOrNothing(t *testing.T, s quota.Store) {
	u := quota.NewID()
	charges := []quota.Charge{
		{Resource: "messages", Limit: 100, Amount: 1},
		{Resource: "messages", Per: quota.Minute, Limit: 100, Amount: 1},
		{Resource: "tokens", Limit: 10, Amount: 6},
	}
	admit(t, s, u, charges...)
	adm := admit(t, s, u, charges...)
	if adm.Allowed || adm.Denied != 2 || adm.Used[2] != 6 {
		t.Fatalf("second admission: %+v", adm)
	}
	snap, err := s.Usage(ctx(t), u)
	if err != nil {
		t.Fatal(err)
	}
	if got := snap.Current("messages", quota.Lifetime); got != 1 {
		t.Fatalf("a refused admission still charged messages: %d", got)
	}
	if got := snap.Current("messages", quota.Minute); got != 1 {
		t.Fatalf("a refused admission still charged messages/minute: %d", got)
	}
	// Two charges on one counter in one call add up before the check.
	adm = admit(t, s, u, quota.Charge{Resource: "files", Limit: 3, Amount: 2}, quota.Charge{Resource: "files", Limit: 3, Amount: 2})
	if adm.Allowed || adm.Denied != 1 {
		t.Fatalf("double charge over the cap: %+v", adm)
	}
	// A release clamps at zero before later charges of the same call count.
	admit(t, s, u, quota.Charge{Resource: "records", Limit: 3, Amount: 2})
	adm = admit(t, s, u,
		quota.Charge{Resource: "records", Limit: 3, Amount: -5},
		quota.Charge{Resource: "records", Limit: 3, Amount: 3},
		quota.Charge{Resource: "records", Limit: 3, Amount: 1})
	if adm.Allowed || adm.Denied != 2 || adm.Used[2] != 3 {
		t.Fatalf("release then charges over the cap: %+v", adm)
	}
}

func testAdmitNegative(t *testing.T, s quota.Store) {
	u := quota.NewID()
	admit(t, s, u, quota.Charge{Resource: "datasets", Limit: 2, Amount: 2})
	if adm := admit(t, s, u, quota.Charge{Resource: "datasets", Limit: 2, Amount: 1}); adm.Allowed {
		t.Fatal("a third dataset over a cap of 2 was admitted")
	}
	if adm := admit(t, s, u, quota.Charge{Resource: "datasets", Limit: 2, Amount: -1}); !adm.Allowed || adm.Used[0] != 1 {
		t.Fatalf("release: %+v", adm)
	}
	if adm := admit(t, s, u, quota.Charge{Resource: "datasets", Limit: 0, Amount: -5}); !adm.Allowed || adm.Used[0] != 0 {
		t.Fatalf("release below zero: %+v", adm)
	}
	if adm := admit(t, s, u, quota.Charge{Resource: "datasets", Limit: 2, Amount: 2}); !adm.Allowed || adm.Used[0] != 2 {
		t.Fatalf("after releases: %+v", adm)
	}
}

func testAdmitWindows(t *testing.T, s quota.Store) {
	u := quota.NewID()
	for _, per := range []quota.Period{quota.Minute, quota.Hour, quota.Day, quota.Month} {
		adm := admit(t, s, u, quota.Charge{Resource: "tokens", Per: per, Limit: 1000, Amount: 10})
		if !adm.Allowed || adm.Used[0] != 10 {
			t.Fatalf("%s: %+v", per, adm)
		}
	}
	snap, err := s.Usage(ctx(t), u)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range snap.Counters {
		start, _ := c.Per.Window(snap.Now)
		// The minute may have turned between the admission and the read.
		if c.Per != quota.Minute && !c.Start.Equal(start) {
			t.Fatalf("%s counter window starts %v, want %v", c.Per, c.Start, start)
		}
	}
	if got := snap.Current("tokens", quota.Month); got != 10 {
		t.Fatalf("month counter = %d", got)
	}
	if got := snap.Current("tokens", quota.Lifetime); got != 0 {
		t.Fatalf("lifetime counter = %d, want 0 (never charged)", got)
	}
}

func testUsageReset(t *testing.T, s quota.Store) {
	u := quota.NewID()
	admit(t, s, u,
		quota.Charge{Resource: "messages", Limit: 5, Amount: 2},
		quota.Charge{Resource: "messages", Per: quota.Day, Limit: 5, Amount: 2},
		quota.Charge{Resource: "tokens", Limit: quota.NoLimit, Amount: 50},
		quota.Charge{Resource: quota.ResourceCredits, Limit: 100, Amount: 30})
	snap, err := s.Usage(ctx(t), u)
	if err != nil || len(snap.Counters) != 4 {
		t.Fatalf("Usage: %+v %v", snap, err)
	}
	if err := s.ResetUsage(ctx(t), u, []string{"messages"}); err != nil {
		t.Fatal(err)
	}
	snap, _ = s.Usage(ctx(t), u)
	if snap.Current("messages", quota.Lifetime) != 0 || snap.Current("messages", quota.Day) != 0 || snap.Current("tokens", quota.Lifetime) != 50 {
		t.Fatalf("after resetting messages: %+v", snap)
	}
	if err := s.ResetUsage(ctx(t), u, nil); err != nil {
		t.Fatal(err)
	}
	snap, _ = s.Usage(ctx(t), u)
	if snap.Current("tokens", quota.Lifetime) != 0 {
		t.Fatalf("after resetting all: %+v", snap)
	}
	// Credits spent are a prepaid balance, not a usage window: a reset of
	// everything (a monthly cron) keeps them; naming them resets them.
	if got := snap.Current(quota.ResourceCredits, quota.Lifetime); got != 30 {
		t.Fatalf("credits spent after resetting all = %d, want 30 (kept)", got)
	}
	if adm := admit(t, s, u, quota.Charge{Resource: "messages", Limit: 5, Amount: 5}); !adm.Allowed {
		t.Fatalf("admission after reset: %+v", adm)
	}
	if err := s.ResetUsage(ctx(t), u, []string{quota.ResourceCredits}); err != nil {
		t.Fatal(err)
	}
	if snap, _ = s.Usage(ctx(t), u); snap.Current(quota.ResourceCredits, quota.Lifetime) != 0 {
		t.Fatalf("credits spent after resetting them by name: %+v", snap)
	}
}

func testConcurrentAdmit(t *testing.T, s quota.Store) {
	u := quota.NewID()
	const n, limit = 200, 50
	var allowed atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			adm, err := s.Admit(context.Background(), u, "", []quota.Charge{
				{Resource: "messages", Limit: limit, Amount: 1},
				{Resource: "messages", Per: quota.Hour, Limit: quota.NoLimit, Amount: 1},
			})
			if err != nil {
				errs <- err
				return
			}
			if adm.Allowed {
				allowed.Add(1)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if allowed.Load() != limit {
		t.Fatalf("%d of %d concurrent requests admitted against a cap of %d", allowed.Load(), n, limit)
	}
	snap, err := s.Usage(ctx(t), u)
	if err != nil {
		t.Fatal(err)
	}
	if got := snap.Current("messages", quota.Lifetime); got != limit {
		t.Fatalf("counter = %d, want %d", got, limit)
	}
}

func testRequestIDs(t *testing.T, s quota.Store) {
	u := quota.NewID()
	msg := func(limit int64) []quota.Charge {
		return []quota.Charge{{Resource: "messages", Limit: limit, Amount: 1}}
	}
	used := func() int64 {
		t.Helper()
		snap, err := s.Usage(ctx(t), u)
		if err != nil {
			t.Fatal(err)
		}
		return snap.Current("messages", quota.Lifetime)
	}
	r1, r2, r3 := quota.NewID(), quota.NewID(), quota.NewID()

	// A repeated request id is admitted once.
	for i := 0; i < 3; i++ {
		adm, err := s.Admit(ctx(t), u, r1, msg(5))
		if err != nil || !adm.Allowed || adm.Used[0] != 1 {
			t.Fatalf("admission %d of one request id: %+v %v", i, adm, err)
		}
	}
	// Cancelling takes it back, once.
	for i := 0; i < 2; i++ {
		if err := s.Resolve(ctx(t), u, r1, msg(5), false); err != nil {
			t.Fatal(err)
		}
		if got := used(); got != 0 {
			t.Fatalf("after cancelling an admitted request (%d): counter %d", i, got)
		}
	}
	if _, err := s.Admit(ctx(t), u, r1, msg(5)); !errors.Is(err, quota.ErrCancelled) {
		t.Fatalf("admitting a cancelled request id: %v", err)
	}
	// A cancellation that overtakes its admission keeps it from charging.
	if err := s.Resolve(ctx(t), u, r2, msg(5), false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Admit(ctx(t), u, r2, msg(5)); !errors.Is(err, quota.ErrCancelled) {
		t.Fatalf("late admission of a cancelled request id: %v", err)
	}
	if got := used(); got != 0 {
		t.Fatalf("a late admission charged: counter %d", got)
	}
	// Forcing counts once, over the limit, and a late admission adds nothing.
	for i := 0; i < 2; i++ {
		if err := s.Resolve(ctx(t), u, r3, msg(0), true); err != nil {
			t.Fatal(err)
		}
	}
	if got := used(); got != 1 {
		t.Fatalf("after forcing a request twice: counter %d, want 1", got)
	}
	if adm, err := s.Admit(ctx(t), u, r3, msg(0)); err != nil || !adm.Allowed || used() != 1 {
		t.Fatalf("late admission of a forced request id: %+v %v, counter %d", adm, err, used())
	}
	if err := s.Resolve(ctx(t), u, "", msg(5), false); !errors.Is(err, quota.ErrInvalid) {
		t.Fatalf("resolving without a request id: %v", err)
	}
	// Request ids are checked alike by every store (quota.ValidateAdmission).
	for _, bad := range []string{"{x}", "a b", "ü", strings.Repeat("a", quota.MaxIDLength+1)} {
		if _, err := s.Admit(ctx(t), u, bad, msg(5)); !errors.Is(err, quota.ErrInvalid) {
			t.Fatalf("admitting under request id %q: %v", bad, err)
		}
		if err := s.Settle(ctx(t), u, bad, msg(5)); !errors.Is(err, quota.ErrInvalid) {
			t.Fatalf("settling request id %q: %v", bad, err)
		}
		if err := s.Resolve(ctx(t), u, bad, msg(5), true); !errors.Is(err, quota.ErrInvalid) {
			t.Fatalf("resolving request id %q: %v", bad, err)
		}
	}
}

func testDistinctKeys(t *testing.T, s quota.Store) {
	u := newUser(t, s, "k@example.com", "")
	conv := func(key string, amount int64) *quota.Admission {
		t.Helper()
		return admit(t, s, u.ID,
			quota.Charge{Resource: "conversations", Limit: 2, Amount: amount, Key: key},
			quota.Charge{Resource: "conversations", Per: quota.Day, Limit: 100, Amount: amount, Key: key})
	}
	steps := []struct {
		key     string
		amount  int64
		allowed bool
		used    int64
	}{
		{"c1", 1, true, 1},
		{"c1", 1, true, 1}, // the fiftieth message of c1 is not a new conversation
		{"c2", 1, true, 2},
		{"c3", 1, false, 2}, // a new conversation over the cap
		{"c1", 1, true, 2},  // an existing one goes on at the cap
		{"zz", -1, true, 2}, // releasing a key never counted changes nothing
		{"c2", -1, true, 1}, // releasing c2 forgets it
		{"c2", 1, true, 2},  // so it counts again
	}
	for i, st := range steps {
		adm := conv(st.key, st.amount)
		if adm.Allowed != st.allowed || adm.Used[0] != st.used {
			t.Fatalf("step %d (%s %+d): allowed=%v used=%d, want %v %d", i, st.key, st.amount, adm.Allowed, adm.Used[0], st.allowed, st.used)
		}
	}
	snap, err := s.Usage(ctx(t), u.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got := snap.Current("conversations", quota.Day); got != 2 {
		t.Fatalf("day window = %d, want 2", got)
	}
	// A reset forgets the keys with the counts.
	if err := s.ResetUsage(ctx(t), u.ID, []string{"conversations"}); err != nil {
		t.Fatal(err)
	}
	if adm := conv("c1", 1); !adm.Allowed || adm.Used[0] != 1 {
		t.Fatalf("c1 after a reset: %+v", adm)
	}
	// Deleting the user takes its keys with it, and its id admits nothing
	// more (ids are never used again).
	if err := s.DeleteUser(ctx(t), u.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Admit(ctx(t), u.ID, "", []quota.Charge{{Resource: "conversations", Per: quota.Lifetime, Limit: 2, Amount: 1, Key: "c1"}}); !errors.Is(err, quota.ErrUnauthenticated) {
		t.Fatalf("c1 after deleting the user: %v", err)
	}
}

func testLeases(t *testing.T, s quota.Store) {
	u := quota.NewID()
	tokens := func(amount int64, hold time.Duration) []quota.Charge {
		return []quota.Charge{{Resource: "tokens", Limit: 100, Amount: amount, Hold: hold}}
	}
	used := func() int64 {
		t.Helper()
		snap, err := s.Usage(ctx(t), u)
		if err != nil {
			t.Fatal(err)
		}
		return snap.Current("tokens", quota.Lifetime)
	}
	if _, err := s.Admit(ctx(t), u, "", tokens(1, time.Second)); !errors.Is(err, quota.ErrInvalid) {
		t.Fatalf("holding without a request id: %v", err)
	}
	r1, r2, r3 := quota.NewID(), quota.NewID(), quota.NewID()
	adm, err := s.Admit(ctx(t), u, r1, tokens(60, time.Hour))
	if err != nil || !adm.Allowed || adm.Used[0] != 60 {
		t.Fatalf("reserve 60: %+v %v", adm, err)
	}
	// Settling releases the reservation and counts the actual use, once.
	for i := 0; i < 2; i++ {
		if err := s.Settle(ctx(t), u, r1, []quota.Charge{{Resource: "tokens", Limit: quota.NoLimit, Amount: 20}}); err != nil {
			t.Fatal(err)
		}
		if got := used(); got != 20 {
			t.Fatalf("after settling (%d): %d, want 20", i, got)
		}
	}
	// A reservation that is never settled is released when its hold ends.
	if adm, err := s.Admit(ctx(t), u, r2, tokens(50, time.Second)); err != nil || adm.Used[0] != 70 {
		t.Fatalf("reserve 50: %+v %v", adm, err)
	}
	time.Sleep(2100 * time.Millisecond)
	admit(t, s, u, quota.Charge{Resource: "tokens", Limit: 100, Amount: 0}) // any admission sweeps
	if got := used(); got != 20 {
		t.Fatalf("after the hold ended: %d, want 20", got)
	}
	// A late settlement of the expired reservation counts only the actual.
	if err := s.Settle(ctx(t), u, r2, []quota.Charge{{Resource: "tokens", Limit: quota.NoLimit, Amount: 30}}); err != nil {
		t.Fatal(err)
	}
	if got := used(); got != 50 {
		t.Fatalf("after a late settlement: %d, want 50", got)
	}
	// Cancelling an admitted reservation takes it back and drops its lease.
	if _, err := s.Admit(ctx(t), u, r3, tokens(10, time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.Resolve(ctx(t), u, r3, tokens(10, time.Hour), false); err != nil {
		t.Fatal(err)
	}
	if err := s.Settle(ctx(t), u, r3, nil); err != nil {
		t.Fatal(err)
	}
	if got := used(); got != 50 {
		t.Fatalf("a cancelled reservation was released twice: %d, want 50", got)
	}
}

// testKeptLeases: a kept charge (a headroom slice or a reservation, whose
// node may have admitted or spent all of it before it died) stays counted
// when its lease expires, even when only the usage is read next; the rest
// of the lease is released.
func testKeptLeases(t *testing.T, s quota.Store) {
	u, rid := quota.NewID(), quota.NewID()
	slice := []quota.Charge{
		{Resource: "messages", Limit: 1000, Amount: 400, Hold: time.Second, Keep: true},
		{Resource: quota.ReservedPrefix + "messages", Limit: quota.NoLimit, Amount: 400, Hold: time.Second},
	}
	if adm := admit(t, s, u, quota.Charge{Resource: "messages", Limit: 1000, Amount: 1}); adm.Used[0] != 1 {
		t.Fatalf("plain admission: %+v", adm)
	}
	if adm, err := s.Admit(ctx(t), u, rid, slice); err != nil || !adm.Allowed || adm.Used[0] != 401 {
		t.Fatalf("slice: %+v %v", adm, err)
	}
	time.Sleep(2100 * time.Millisecond)
	// Reading the usage ends expired leases too: a tenant that sends
	// nothing more must not show them as reserved forever.
	snap, err := s.Usage(ctx(t), u)
	if err != nil {
		t.Fatal(err)
	}
	if got, marker := snap.Current("messages", quota.Lifetime), snap.Current(quota.ReservedPrefix+"messages", quota.Lifetime); got != 401 || marker != 0 {
		t.Fatalf("after the slice's hold ended: messages %d (want 401: a dead node's slice counts as used), marker %d (want 0)", got, marker)
	}
	// A settlement that comes late (the node was slow, not dead) still
	// replaces what was kept: counted once, not twice.
	if err := s.Settle(ctx(t), u, rid, []quota.Charge{{Resource: "messages", Limit: quota.NoLimit, Amount: 30}}); err != nil {
		t.Fatal(err)
	}
	if snap, err = s.Usage(ctx(t), u); err != nil {
		t.Fatal(err)
	}
	if got := snap.Current("messages", quota.Lifetime); got != 31 {
		t.Fatalf("after a late settlement: messages %d, want 31 (1 + what the slice admitted)", got)
	}
}

// testResetKeepsHolds: a reset leaves counted what requests in flight hold,
// so that their settlement, which takes the hold back, never subtracts from
// usage that never held it (a free reservation after every reset).
func testResetKeepsHolds(t *testing.T, s quota.Store) {
	for _, resources := range [][]string{nil, {"tokens"}} {
		u, rid := quota.NewID(), quota.NewID()
		admit(t, s, u, quota.Charge{Resource: "tokens", Limit: quota.NoLimit, Amount: 500}, quota.Charge{Resource: "messages", Limit: quota.NoLimit, Amount: 3})
		if adm, err := s.Admit(ctx(t), u, rid, []quota.Charge{
			{Resource: "tokens", Limit: 100_000, Amount: 60_000, Hold: time.Hour},
			{Resource: "tokens", Per: quota.Day, Limit: 100_000, Amount: 60_000, Hold: time.Hour},
		}); err != nil || !adm.Allowed {
			t.Fatalf("reserve: %+v %v", adm, err)
		}
		if err := s.ResetUsage(ctx(t), u, resources); err != nil {
			t.Fatal(err)
		}
		flush(s)
		current := func(res string, per quota.Period) int64 {
			t.Helper()
			snap, err := s.Usage(ctx(t), u)
			if err != nil {
				t.Fatal(err)
			}
			return snap.Current(res, per)
		}
		if got, day := current("tokens", quota.Lifetime), current("tokens", quota.Day); got != 60_000 || day != 60_000 {
			t.Fatalf("reset %v: tokens %d / day %d right after, want what is held (60000)", resources, got, day)
		}
		if err := s.Settle(ctx(t), u, rid, []quota.Charge{{Resource: "tokens", Limit: quota.NoLimit, Amount: 7}, {Resource: "tokens", Per: quota.Day, Limit: quota.NoLimit, Amount: 7}}); err != nil {
			t.Fatal(err)
		}
		if got, day := current("tokens", quota.Lifetime), current("tokens", quota.Day); got != 7 || day != 7 {
			t.Fatalf("reset %v: tokens %d / day %d after the settlement, want what it used (7)", resources, got, day)
		}
		want := int64(0)
		if resources != nil {
			want = 3
		}
		if got := current("messages", quota.Lifetime); got != want {
			t.Fatalf("reset %v: messages %d, want %d", resources, got, want)
		}
	}
}

// testUpdateCAS: a write over a revision other than the stored one is
// stale and changes nothing.
func testUpdateCAS(t *testing.T, s quota.Store) {
	u := newUser(t, s, "cas@example.com", "cas")
	a, b := u.Clone(), u.Clone()
	a.Name, a.Revision = "A", u.Revision+1
	b.Name, b.Revision = "B", u.Revision+1
	if err := s.UpdateUser(ctx(t), a); err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateUser(ctx(t), b); !errors.Is(err, quota.ErrStale) {
		t.Fatalf("second write over the same revision: want ErrStale, got %v", err)
	}
	b.Email = "moved@example.com"
	if err := s.UpdateUser(ctx(t), b); !errors.Is(err, quota.ErrStale) {
		t.Fatalf("stale write with a new email: want ErrStale, got %v", err)
	}
	if got, _ := s.GetUser(ctx(t), u.ID); got.Name != "A" || got.Revision != u.Revision+1 {
		t.Fatalf("after a stale write: %+v", got)
	}
	// The stale write's email claim was released.
	newUser(t, s, "moved@example.com", "")
}

// testConcurrentAdminWrites: through the Service, concurrent top-ups all
// count, and a disable racing top-ups and limit changes sticks.
func testConcurrentAdminWrites(t *testing.T, s quota.Store) {
	svc := serviceOn(t, s)
	u, err := svc.CreateUser(ctx(t), quota.NewUser{Name: "Race", Email: "race@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := svc.AddCredits(context.Background(), u.ID, 1); err != nil {
				failed.Add(1)
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if got, _ := svc.GetUser(ctx(t), u.ID); got.Credits != 50 || failed.Load() != 0 {
		t.Fatalf("50 concurrent top-ups of 1: credits %d, %d failed", got.Credits, failed.Load())
	}
	disabled := quota.StatusDisabled
	for range 5 {
		for i := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if i == 10 {
					if _, err := svc.UpdateUser(context.Background(), u.ID, quota.UserPatch{Status: &disabled}); err != nil {
						t.Error(err)
					}
					return
				}
				if i%2 == 0 {
					if _, err := svc.AddCredits(context.Background(), u.ID, 1); err != nil {
						t.Error(err)
					}
					return
				}
				lim := quota.Limits{"messages": {{Limit: int64(i)}}}
				if _, err := svc.PatchLimits(context.Background(), u.ID, lim); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if got, _ := svc.GetUser(ctx(t), u.ID); got.Status != quota.StatusDisabled {
			t.Fatalf("a disable racing top-ups and limit changes did not stick: %+v", got)
		}
		active := quota.StatusActive
		if _, err := svc.UpdateUser(ctx(t), u.ID, quota.UserPatch{Status: &active}); err != nil {
			t.Fatal(err)
		}
	}
}

// testCountersSaturate: no sum of charges takes a counter past
// quota.MaxCounter or below zero.
func testCountersSaturate(t *testing.T, s quota.Store) {
	u := newUser(t, s, "sat@example.com", "")
	big := []quota.Charge{{Resource: "tokens", Limit: quota.NoLimit, Amount: quota.MaxLimit}}
	for range 10 {
		if adm, err := s.Admit(ctx(t), u.ID, "", big); err != nil || !adm.Allowed {
			t.Fatalf("admit: %+v %v", adm, err)
		}
	}
	snap, err := s.Usage(ctx(t), u.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got := snap.Current("tokens", quota.Lifetime); got != quota.MaxCounter {
		t.Fatalf("ten charges of MaxLimit: counter %d, want %d", got, int64(quota.MaxCounter))
	}
}

// testOutbox: every change writes its events with it; they list in the
// order written, filtered and paged; each sink reads from its own cursor;
// the lease has one holder; trimming drops old events.
func testOutbox(t *testing.T, s quota.Store) {
	svc, err := quota.NewService(quota.Options{Store: s})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	c := quota.WithActor(ctx(t), "ops")
	var users []*quota.User
	for i := range 3 {
		u, err := svc.CreateUser(c, quota.NewUser{Name: "E", Email: fmt.Sprintf("e%d@example.com", i)})
		if err != nil {
			t.Fatal(err)
		}
		users = append(users, u)
	}
	u := users[0]
	tok, err := svc.CreateToken(c, u.ID, quota.NewToken{Name: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.PatchLimits(c, u.ID, quota.Limits{"messages": {{Limit: 5}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.AddCredits(c, u.ID, 7); err != nil {
		t.Fatal(err)
	}
	disabled := quota.StatusDisabled
	if _, err := svc.UpdateUser(c, u.ID, quota.UserPatch{Status: &disabled}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.ResetUsage(c, u.ID, []string{"messages"}); err != nil {
		t.Fatal(err)
	}
	if err := svc.RevokeToken(c, u.ID, tok.ID); err != nil {
		t.Fatal(err)
	}
	if err := svc.DeleteUser(c, users[2].ID); err != nil {
		t.Fatal(err)
	}
	want := []string{
		quota.EventTokenCreated, quota.EventUserUpdated, quota.EventLimitsUpdated,
		quota.EventUserUpdated, quota.EventCreditsAdded, quota.EventUserUpdated, quota.EventUserDisabled,
		quota.EventCreditsZeroed, quota.EventUsageReset, quota.EventTokenRevoked,
	}
	page, err := s.ListEvents(ctx(t), quota.EventQuery{UserID: u.ID, Take: 100})
	if err != nil || page.More {
		t.Fatalf("ListEvents: %v, more %v", err, page.More)
	}
	var types []string
	for _, e := range page.Events {
		if e.Subject != u.ID || e.Actor != "ops" || e.ID == "" || e.Time.IsZero() || len(e.Data) == 0 {
			t.Fatalf("event %+v", e)
		}
		if e.Type == quota.EventTokenCreated && strings.Contains(string(e.Data), tok.Secret) {
			t.Fatal("token.created carries the secret")
		}
		types = append(types, e.Type)
	}
	want = append([]string{quota.EventUserCreated}, want...)
	if fmt.Sprint(types) != fmt.Sprint(want) {
		t.Fatalf("events of one user:\n got %v\nwant %v", types, want)
	}
	// All users, paged two at a time, in the order written per user.
	var all []quota.Event
	after := ""
	for n := 0; ; n++ {
		page, err := s.ListEvents(ctx(t), quota.EventQuery{After: after, Take: 2})
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page.Events...)
		if !page.More {
			break
		}
		after = page.Cursor
		if n > 50 {
			t.Fatal("paging does not end")
		}
	}
	if len(all) != len(want)+3 { // two more user.created and a user.deleted
		t.Fatalf("%d events in all, want %d", len(all), len(want)+3)
	}
	seen := map[string]bool{}
	for _, e := range all {
		if seen[e.ID] {
			t.Fatalf("event %s listed twice", e.ID)
		}
		seen[e.ID] = true
	}
	if page, err := s.ListEvents(ctx(t), quota.EventQuery{TypePrefix: "user.created", Take: 10}); err != nil || len(page.Events) != 3 {
		t.Fatalf("type filter: %d, %v", len(page.Events), err)
	}
	if _, err := s.ListEvents(ctx(t), quota.EventQuery{After: "garbage", Take: 10}); !errors.Is(err, quota.ErrInvalid) {
		t.Fatalf("a bad cursor: %v", err)
	}

	// Delivery: each sink reads every event once, in order per partition.
	parts, err := s.EventPartitions(ctx(t))
	if err != nil || len(parts) == 0 {
		t.Fatalf("partitions %v %v", parts, err)
	}
	for _, sink := range []string{"a", "b"} {
		n := 0
		for _, p := range parts {
			for {
				evs, err := s.ReadEvents(ctx(t), p, sink, 3)
				if err != nil {
					t.Fatal(err)
				}
				if len(evs) == 0 {
					break
				}
				n += len(evs)
				if err := s.AckEvent(ctx(t), p, sink, evs[len(evs)-1].Pos); err != nil {
					t.Fatal(err)
				}
			}
		}
		if n != len(all) {
			t.Fatalf("sink %s read %d events, want %d", sink, n, len(all))
		}
	}
	if ok, err := s.LeadEvents(ctx(t), "node-1", time.Minute); err != nil || !ok {
		t.Fatalf("lease: %v %v", ok, err)
	}
	if ok, err := s.LeadEvents(ctx(t), "node-1", time.Minute); err != nil || !ok {
		t.Fatalf("lease renewal: %v %v", ok, err)
	}
	if err := s.TrimEvents(ctx(t), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if page, err := s.ListEvents(ctx(t), quota.EventQuery{Take: 10}); err != nil || len(page.Events) != 0 {
		t.Fatalf("after trimming everything: %d events, %v", len(page.Events), err)
	}
}

// testStartSink: a sink new to the store starts after the events written
// so far, in every partition, and gets every event written after; a sink
// that has cursors resumes; a new sink takes over a former name's
// cursors, reading from the start of a partition where the former had
// none; starting twice changes nothing.
func testStartSink(t *testing.T, s quota.Store) {
	svc, err := quota.NewService(quota.Options{Store: s})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	create := func(tag string, n int) {
		t.Helper()
		for i := range n {
			if _, err := svc.CreateUser(ctx(t), quota.NewUser{Name: "S", Email: fmt.Sprintf("%s%d@example.com", tag, i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// read reads sink's events in every partition, moving its cursor to
	// the end (or past the first event only, with firstOnly).
	read := func(sink string, firstOnly bool) int {
		t.Helper()
		parts, err := s.EventPartitions(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, p := range parts {
			for {
				evs, err := s.ReadEvents(ctx(t), p, sink, 100)
				if err != nil {
					t.Fatal(err)
				}
				if len(evs) == 0 {
					break
				}
				if firstOnly {
					evs = evs[:1]
				}
				n += len(evs)
				if err := s.AckEvent(ctx(t), p, sink, evs[len(evs)-1].Pos); err != nil {
					t.Fatal(err)
				}
				if firstOnly {
					return n
				}
			}
		}
		return n
	}
	start := func(sink, former string) {
		t.Helper()
		if err := s.StartSink(ctx(t), sink, former); err != nil {
			t.Fatalf("StartSink(%q, %q): %v", sink, former, err)
		}
	}
	create("backlog", 4)
	if n := read("partial", true); n != 1 {
		t.Fatalf("the partial sink read %d events, want 1", n)
	}
	start("partial", "") // it has a cursor (an older version read with it): it resumes
	start("new", "")
	start("renamed", "partial")
	start("renamed-from-nothing", "no-such-sink")
	start("new", "") // twice: nothing moves
	for _, tt := range []struct {
		sink string
		want int
	}{
		{"new", 0},
		{"renamed-from-nothing", 0},
		{"renamed", 3}, // 4 written, the former delivered 1
		{"partial", 3},
	} {
		if n := read(tt.sink, false); n != tt.want {
			t.Errorf("sink %s read %d of the backlog, want %d", tt.sink, n, tt.want)
		}
	}
	create("later", 5)
	start("new", "partial") // a started sink keeps its cursors, whatever former says
	for _, sink := range []string{"new", "renamed", "renamed-from-nothing", "partial"} {
		if n := read(sink, false); n != 5 {
			t.Errorf("sink %s read %d events written after it started, want 5", sink, n)
		}
	}
}

// testThresholds: 30 concurrent admissions against a cap of 10 fire the
// 80 % and 100 % events exactly once; reservations in flight do not count
// as usage, their settlement does; a window counts apart from the
// lifetime; a reset lets thresholds fire again.
func testThresholds(t *testing.T, s quota.Store) {
	svc, err := quota.NewService(quota.Options{Store: s})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	u, err := svc.CreateUser(ctx(t), quota.NewUser{Name: "T", Email: "thr@example.com", Limits: quota.Limits{
		"messages": {{Limit: 10}, {Limit: 100, Per: quota.Day}},
		"tokens":   {{Limit: 100}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = svc.AdmitUses(context.Background(), u, []quota.Use{{Resource: "messages", Amount: 1}})
		}()
	}
	wg.Wait()
	thresholds := func() []quota.ThresholdData {
		page, err := s.ListEvents(ctx(t), quota.EventQuery{UserID: u.ID, TypePrefix: quota.EventUsageThreshold, Take: 100})
		if err != nil {
			t.Fatal(err)
		}
		var out []quota.ThresholdData
		for _, e := range page.Events {
			var d quota.ThresholdData
			if err := json.Unmarshal(e.Data, &d); err != nil || e.Subject != u.ID || e.ID == "" || e.Time.IsZero() {
				t.Fatalf("event %+v: %v", e, err)
			}
			out = append(out, d)
		}
		return out
	}
	flush(s)
	got := thresholds()
	if len(got) != 2 || got[0].Percent != 80 || got[0].Used != 8 || got[1].Percent != 100 || got[1].Used != 10 ||
		got[0].Resource != "messages" || got[0].Period != "lifetime" || got[0].WindowStart != nil || got[0].Limit != 10 {
		t.Fatalf("30 admissions against 10: %+v", got)
	}
	// A reservation of 95 tokens is not usage yet; its settlement to 85 is.
	reserved := quota.TokenCount{Input: 5, Output: 90}
	ticket, err := svc.AdmitUses(ctx(t), u, quota.Held(append(reserved.Uses(), reserved.Reserved()...), time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	flush(s)
	if n := len(thresholds()); n != 2 {
		t.Fatalf("a reservation fired a threshold: %d events", n)
	}
	if err := ticket.SettleUses(ctx(t), quota.TokenCount{Input: 5, Output: 80}.Uses()); err != nil {
		t.Fatal(err)
	}
	flush(s)
	got = thresholds()
	if len(got) != 3 || got[2].Resource != "tokens" || got[2].Percent != 80 || got[2].Used != 85 {
		t.Fatalf("after settling 85 of 100 tokens: %+v", got)
	}
	// The reset forgets the messages marks: reaching 80 % again fires again.
	if _, err := svc.ResetUsage(ctx(t), u.ID, []string{"messages"}); err != nil {
		t.Fatal(err)
	}
	for range 8 {
		if _, err := svc.AdmitUses(ctx(t), u, []quota.Use{{Resource: "messages", Amount: 1}}); err != nil {
			t.Fatal(err)
		}
	}
	flush(s)
	got = thresholds()
	if len(got) != 4 || got[3].Percent != 80 || got[3].Resource != "messages" {
		t.Fatalf("after a reset and 8 more: %+v", got)
	}
}

// flush writes a store's buffered counters (and the events decided with
// them) now, for stores that buffer.
func flush(s quota.Store) {
	if f, ok := s.(interface{ Flush() error }); ok {
		_ = f.Flush()
	}
}

// testResetTokenCounters: resetting a resource resets the tokens' own
// counters of it too.
func testResetTokenCounters(t *testing.T, s quota.Store) {
	u := newUser(t, s, "rtok@example.com", "")
	tr := quota.TokenResource(quota.NewID(), "messages")
	if _, err := s.Admit(ctx(t), u.ID, "", []quota.Charge{{Resource: "messages", Limit: 10, Amount: 2}, {Resource: tr, Limit: 5, Amount: 2}}); err != nil {
		t.Fatal(err)
	}
	if err := s.ResetUsage(ctx(t), u.ID, []string{"messages"}); err != nil {
		t.Fatal(err)
	}
	snap, err := s.Usage(ctx(t), u.ID)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Current("messages", quota.Lifetime) != 0 || snap.Current(tr, quota.Lifetime) != 0 {
		t.Fatalf("after a reset of messages: %+v", snap.Counters)
	}
}

// pollEvents lists the events after cursor until the log's end, page by
// page of take, and returns them with the cursor to poll from next.
func pollEvents(t *testing.T, s quota.Store, q quota.EventQuery, cursor string) ([]quota.Event, string) {
	t.Helper()
	var out []quota.Event
	for range 1000 {
		q.After = cursor
		page, err := s.ListEvents(ctx(t), q)
		if err != nil {
			t.Fatalf("ListEvents(after %q): %v", cursor, err)
		}
		if page.Cursor == "" {
			t.Fatalf("ListEvents(after %q): no cursor", cursor)
		}
		out = append(out, page.Events...)
		cursor = page.Cursor
		if !page.More {
			return out, cursor
		}
	}
	t.Fatal("paging does not end")
	return nil, ""
}

// testEventPolling: every page of the event log, the last and an empty
// one too, has a cursor; polling with it later lists only the events
// written since, each once, whatever the filters, and none is skipped by
// events written while the log is being read, in any partition.
func testEventPolling(t *testing.T, s quota.Store) {
	svc, err := quota.NewService(quota.Options{Store: s})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	all := quota.EventQuery{Take: 5}

	evs, cursor := pollEvents(t, s, all, "")
	if len(evs) != 0 {
		t.Fatalf("an empty log lists %d events", len(evs))
	}
	// Polling an empty log again keeps giving a cursor.
	if evs, cursor = pollEvents(t, s, all, cursor); len(evs) != 0 {
		t.Fatalf("an empty log lists %d events", len(evs))
	}

	// waitFor polls from cursor until it has listed n events (a store may
	// list an event a moment after it was written, never twice or never).
	waitFor := func(q quota.EventQuery, cursor string, n int) ([]quota.Event, string) {
		t.Helper()
		var got []quota.Event
		deadline := time.Now().Add(5 * time.Second)
		for {
			evs, next := pollEvents(t, s, q, cursor)
			got, cursor = append(got, evs...), next
			if len(got) >= n || time.Now().After(deadline) {
				return got, cursor
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	c := context.Background()
	a, err := svc.CreateUser(c, quota.NewUser{Name: "A", Email: "poll-a@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	evs, cursor = waitFor(all, cursor, 1)
	if len(evs) != 1 || evs[0].Type != quota.EventUserCreated || evs[0].Subject != a.ID {
		t.Fatalf("after the cursor of the end: %+v, want A's user.created", evs)
	}
	if evs, _ = pollEvents(t, s, all, cursor); len(evs) != 0 {
		t.Fatalf("polling again lists %d events again", len(evs))
	}

	// A filter that matches nothing yet still gives a cursor that moves
	// past what it skipped.
	tokens := quota.EventQuery{TypePrefix: "token.", Take: 5}
	evs, tcursor := pollEvents(t, s, tokens, "")
	if len(evs) != 0 {
		t.Fatalf("token events: %+v", evs)
	}
	if _, err := svc.UpdateUser(c, a.ID, quota.UserPatch{Name: ptr("A2")}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.CreateToken(c, a.ID, quota.NewToken{Name: "t"}); err != nil {
		t.Fatal(err)
	}
	if evs, _ = waitFor(tokens, tcursor, 1); len(evs) != 1 || evs[0].Type != quota.EventTokenCreated {
		t.Fatalf("token events after the filter's cursor: %+v, want one token.created", evs)
	}
	user := quota.EventQuery{UserID: a.ID, Take: 1}
	if evs, _ = pollEvents(t, s, user, ""); len(evs) != 3 {
		t.Fatalf("A's events, one a page: %d, want 3", len(evs))
	}

	// Writers on many users (many partitions on a sharded outbox) while a
	// reader polls: every event is listed exactly once.
	evs, cursor = pollEvents(t, s, all, cursor)
	if len(evs) != 2 {
		t.Fatalf("user.updated and token.created: %d events", len(evs))
	}
	const writers, each = 4, 15
	var wg sync.WaitGroup
	var done atomic.Bool
	want := map[string]bool{}
	var mu sync.Mutex
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				u, err := svc.CreateUser(c, quota.NewUser{Name: "P", Email: fmt.Sprintf("poll-%d-%d@example.com", w, i)})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				want[u.ID] = true
				mu.Unlock()
			}
		}()
	}
	go func() { wg.Wait(); done.Store(true) }()
	seen := map[string]int{}
	for !done.Load() {
		evs, cursor = pollEvents(t, s, quota.EventQuery{Take: 3}, cursor)
		for _, e := range evs {
			seen[e.Subject]++
		}
	}
	evs, _ = waitFor(quota.EventQuery{Take: 3}, cursor, writers*each-len(seen))
	for _, e := range evs {
		seen[e.Subject]++
	}
	for id := range want {
		if seen[id] != 1 {
			t.Errorf("user %s: its user.created listed %d times while polling", id, seen[id])
		}
	}
	if len(seen) != len(want) {
		t.Fatalf("polling listed events of %d users, %d were created", len(seen), len(want))
	}
}

func ptr[T any](v T) *T { return &v }

// testUpdateToken: GetToken finds a user's token by id; UpdateToken
// replaces it, for lookups by hash and in the user's list, with its
// events, only over the revision it was read at; a touch keeps what an
// update wrote, and an update never brings back a revoked token.
func testUpdateToken(t *testing.T, s quota.Store) {
	u := newUser(t, s, "a@example.com", "")
	tok := newToken(t, s, u, "one")
	got, err := s.GetToken(ctx(t), u.ID, tok.ID)
	if err != nil || got.ID != tok.ID || got.Hash != tok.Hash || got.Name != "one" || got.Revision != 0 {
		t.Fatalf("GetToken: %+v %v", got, err)
	}
	other := newUser(t, s, "b@example.com", "")
	_, err = s.GetToken(ctx(t), other.ID, tok.ID)
	mustNotFound(t, "another user's token", err)
	_, err = s.GetToken(ctx(t), u.ID, quota.NewID())
	mustNotFound(t, "an unknown token", err)

	exp := time.Now().UTC().Add(time.Minute).Truncate(time.Millisecond)
	changed := *got
	changed.Name, changed.ExpiresAt, changed.Revision = "renamed", &exp, 1
	changed.Limits = quota.Limits{"messages": {{Limit: 3}}}
	ev := quota.Event{ID: quota.NewID(), Type: quota.EventTokenUpdated, Time: time.Now().UTC(), Subject: u.ID, Data: []byte(`{}`)}
	if err := s.UpdateToken(ctx(t), &changed, ev); err != nil {
		t.Fatalf("UpdateToken: %v", err)
	}
	check := func(what string, want *quota.Token) {
		t.Helper()
		byHash, err := s.GetTokenByHash(ctx(t), want.Hash)
		if err != nil {
			t.Fatalf("%s: by hash: %v", what, err)
		}
		byID, err := s.GetToken(ctx(t), want.UserID, want.ID)
		if err != nil {
			t.Fatalf("%s: by id: %v", what, err)
		}
		list, err := s.ListTokens(ctx(t), want.UserID)
		if err != nil || len(list) != 1 {
			t.Fatalf("%s: listed %v %v", what, list, err)
		}
		for _, g := range []*quota.Token{byHash, byID, list[0]} {
			gl, _ := g.Limits.MarshalJSON()
			wl, _ := want.Limits.MarshalJSON()
			if g.Name != want.Name || g.Revision != want.Revision || g.ExpiresAt == nil || !g.ExpiresAt.Equal(*want.ExpiresAt) ||
				string(gl) != string(wl) || g.Hash != want.Hash || !g.CreatedAt.Equal(want.CreatedAt) {
				t.Fatalf("%s: %+v, want %+v", what, g, want)
			}
		}
	}
	check("after the update", &changed)
	page, err := s.ListEvents(ctx(t), quota.EventQuery{UserID: u.ID, Take: 10})
	if err != nil || len(page.Events) != 1 || page.Events[0].ID != ev.ID {
		t.Fatalf("the update's event: %+v %v", page.Events, err)
	}

	stale := changed
	stale.Name, stale.Revision = "stale", 1
	if err := s.UpdateToken(ctx(t), &stale); !errors.Is(err, quota.ErrStale) {
		t.Fatalf("an update over an older revision: %v, want ErrStale", err)
	}
	check("after a stale update", &changed)

	// A touch keeps the update; the next update keeps the touch.
	used := time.Now().UTC().Truncate(time.Millisecond)
	if err := s.TouchTokens(ctx(t), map[string]time.Time{tok.Hash: used}); err != nil {
		t.Fatal(err)
	}
	check("after a touch", &changed)
	touched, err := s.GetToken(ctx(t), u.ID, tok.ID)
	if err != nil || touched.LastUsedAt == nil || !touched.LastUsedAt.Equal(used) {
		t.Fatalf("touched: %+v %v", touched, err)
	}
	next := *touched
	next.Name, next.Revision = "twice", 2
	if err := s.UpdateToken(ctx(t), &next); err != nil {
		t.Fatalf("the second update: %v", err)
	}
	check("after the second update", &next)
	if got, _ := s.GetTokenByHash(ctx(t), tok.Hash); got.LastUsedAt == nil || !got.LastUsedAt.Equal(used) {
		t.Fatalf("lastUsedAt after an update: %v, want %v", got.LastUsedAt, used)
	}

	if _, err := s.DeleteToken(ctx(t), u.ID, tok.ID); err != nil {
		t.Fatal(err)
	}
	gone := next
	gone.Revision = 3
	mustNotFound(t, "updating a revoked token", s.UpdateToken(ctx(t), &gone))
	_, err = s.GetTokenByHash(ctx(t), tok.Hash)
	mustNotFound(t, "an update must not bring back a revoked token", err)
	_, err = s.GetToken(ctx(t), u.ID, tok.ID)
	mustNotFound(t, "a revoked token by id", err)
}

// testConcurrentTokenUpdates: concurrent changes of one token, with
// touches in between, through the service on this store: none is lost.
func testConcurrentTokenUpdates(t *testing.T, s quota.Store) {
	svc := serviceOn(t, s)
	u, err := svc.CreateUser(ctx(t), quota.NewUser{Name: "Race", Email: "race@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := svc.CreateToken(ctx(t), u.ID, quota.NewToken{Name: "t"})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(2)
		go func() {
			defer wg.Done()
			l := quota.Limits{fmt.Sprintf("r%d", i): {{Limit: int64(i)}}}
			if _, err := svc.UpdateToken(context.Background(), u.ID, tok.ID, quota.TokenPatch{Limits: l}); err != nil {
				t.Error(err)
			}
		}()
		go func() {
			defer wg.Done()
			_ = s.TouchTokens(context.Background(), map[string]time.Time{quota.HashTokenSecret(tok.Secret): time.Now()})
		}()
	}
	wg.Wait()
	got, err := svc.GetToken(ctx(t), u.ID, tok.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Limits) != n || got.Revision != n {
		t.Fatalf("after %d concurrent updates: %d limits, revision %d", n, len(got.Limits), got.Revision)
	}
	p, err := svc.Authenticate(ctx(t), tok.Secret)
	if err != nil || len(p.Token.Limits) != n {
		t.Fatalf("authenticated after the updates: %v limits, %v", p.Token.Limits, err)
	}
	page, err := s.ListEvents(ctx(t), quota.EventQuery{UserID: u.ID, TypePrefix: quota.EventTokenUpdated, Take: 100})
	if err != nil || len(page.Events) != n {
		t.Fatalf("token.updated events: %d, %v", len(page.Events), err)
	}
}

// testRevokedTokenCounters: revoking a token removes its own counters and
// distinct keys (a token counts its lifetime use, so every used token has
// some: rotated tokens must not pile up in their user's usage), and
// leaves the user's and other tokens' counters alone.
func testRevokedTokenCounters(t *testing.T, s quota.Store) {
	u := newUser(t, s, "a@example.com", "")
	gone, kept := newToken(t, s, u, "gone"), newToken(t, s, u, "kept")
	charges := func(tok *quota.Token) []quota.Charge {
		return []quota.Charge{
			{Resource: "messages", Limit: quota.NoLimit, Amount: 1},
			{Resource: quota.TokenResource(tok.ID, "messages"), Limit: quota.NoLimit, Amount: 1},
			{Resource: quota.TokenResource(tok.ID, "messages"), Per: quota.Day, Limit: 100, Amount: 1},
			{Resource: quota.TokenResource(tok.ID, "conversations"), Limit: 10, Amount: 1, Key: "c1"},
		}
	}
	for _, tok := range []*quota.Token{gone, kept} {
		if adm, err := s.Admit(ctx(t), u.ID, "", charges(tok)); err != nil || !adm.Allowed {
			t.Fatalf("admit: %+v %v", adm, err)
		}
	}
	if _, err := s.DeleteToken(ctx(t), u.ID, gone.ID); err != nil {
		t.Fatal(err)
	}
	snap, err := s.Usage(ctx(t), u.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range snap.Counters {
		if id, _, ok := quota.SplitTokenResource(c.Resource); ok && id == gone.ID {
			t.Fatalf("a revoked token's counter is left: %+v", c)
		}
	}
	if snap.Current("messages", quota.Lifetime) != 2 || snap.Current(quota.TokenResource(kept.ID, "messages"), quota.Lifetime) != 1 ||
		snap.Current(quota.TokenResource(kept.ID, "conversations"), quota.Lifetime) != 1 {
		t.Fatalf("the user's and the other token's counters changed: %+v", snap.Counters)
	}
	// The other token's distinct key is still known: the same key again
	// is not counted again.
	again := []quota.Charge{{Resource: quota.TokenResource(kept.ID, "conversations"), Limit: 10, Amount: 1, Key: "c1"}}
	if adm, err := s.Admit(ctx(t), u.ID, "", again); err != nil || !adm.Allowed || adm.Used[0] != 1 {
		t.Fatalf("the kept token's known conversation: %+v %v", adm, err)
	}
	// A reset of the resource forgets the token's keys with its counters
	// (bbolt kept them: the same conversation then counted for the user
	// and not for the token).
	if err := s.ResetUsage(ctx(t), u.ID, []string{"conversations"}); err != nil {
		t.Fatal(err)
	}
	if adm, err := s.Admit(ctx(t), u.ID, "", again); err != nil || !adm.Allowed || adm.Used[0] != 1 {
		t.Fatalf("a token's conversation after a reset of conversations: %+v %v, want counted again", adm, err)
	}
	// The revoked token's keys went with its counters (a settlement in
	// flight writing its counter again would start from nothing known).
	late := []quota.Charge{{Resource: quota.TokenResource(gone.ID, "conversations"), Limit: 10, Amount: 1, Key: "c1"}}
	if adm, err := s.Admit(ctx(t), u.ID, "", late); err != nil || !adm.Allowed || adm.Used[0] != 1 {
		t.Fatalf("the revoked token's conversation key was left: %+v %v", adm, err)
	}
}

// serviceOn is a quota.Service over s, closed when the test ends.
func serviceOn(t *testing.T, s quota.Store) *quota.Service {
	t.Helper()
	svc, err := quota.NewService(quota.Options{Store: s})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	return svc
}
