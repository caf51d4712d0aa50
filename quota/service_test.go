package quota_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tenantquota/caddy-tenant-quota/internal/testclock"
	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/boltstore"
)

// countingStore counts the lookups that reach a real store.
type countingStore struct {
	quota.Store
	tokenLookups, userLookups atomic.Int64
}

func (c *countingStore) GetTokenByHash(ctx context.Context, hash string) (*quota.Token, error) {
	c.tokenLookups.Add(1)
	return c.Store.GetTokenByHash(ctx, hash)
}

func (c *countingStore) GetUser(ctx context.Context, id string) (*quota.User, error) {
	c.userLookups.Add(1)
	return c.Store.GetUser(ctx, id)
}

func newService(t testing.TB) (*quota.Service, *countingStore, *testclock.Clock, *[]quota.Event) {
	t.Helper()
	bs, err := boltstore.Open(boltstore.Options{Path: filepath.Join(t.TempDir(), "q.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bs.Close() })
	cs := &countingStore{Store: bs}
	clock := testclock.At(time.Now())
	var events []quota.Event
	svc, err := quota.NewService(quota.Options{Store: cs, Clock: clock, OnEvent: func(e quota.Event) { events = append(events, e) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	return svc, cs, clock, &events
}

func TestServiceAuthenticateAndCache(t *testing.T) {
	t.Parallel()
	svc, cs, clock, _ := newService(t)
	ctx := context.Background()
	u, err := svc.CreateUser(ctx, quota.NewUser{Name: "Ada", Email: " Ada@Example.COM "})
	if err != nil {
		t.Fatal(err)
	}
	if u.Email != "ada@example.com" || u.Status != quota.StatusActive {
		t.Fatalf("created %+v", u)
	}
	exp := clock.Now().Add(time.Hour)
	issued, err := svc.CreateToken(ctx, u.ID, quota.NewToken{Name: "ci", ExpiresAt: &exp})
	if err != nil {
		t.Fatal(err)
	}
	if issued.Hash != "" {
		t.Fatal("an issued token shows its hash")
	}
	// Wait for ristretto's buffered sets so the hit is deterministic.
	var p *quota.Principal
	for i := 0; i < 50; i++ {
		p, err = svc.Authenticate(ctx, issued.Secret)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if p.User.ID != u.ID || p.Token.ID != issued.ID {
		t.Fatalf("principal %+v", p)
	}
	tl, ul := cs.tokenLookups.Load(), cs.userLookups.Load()
	for i := 0; i < 100; i++ {
		if _, err := svc.Authenticate(ctx, issued.Secret); err != nil {
			t.Fatal(err)
		}
	}
	if cs.tokenLookups.Load() != tl || cs.userLookups.Load() != ul {
		t.Fatalf("cache hits reached the store: %d token and %d user lookups", cs.tokenLookups.Load()-tl, cs.userLookups.Load()-ul)
	}

	// A lowered limit and a disabled status take effect at once.
	if _, err := svc.PatchLimits(ctx, u.ID, quota.Limits{"messages": {{Limit: 0}}}); err != nil {
		t.Fatal(err)
	}
	p, _ = svc.Authenticate(ctx, issued.Secret)
	if _, err := svc.AdmitUses(ctx, p.User, []quota.Use{{Resource: "messages", Amount: 1}}); !errors.Is(err, quota.ErrLimitExceeded) {
		t.Fatalf("admit after lowering the limit to 0: %v", err)
	}
	st := quota.StatusDisabled
	if _, err := svc.UpdateUser(ctx, u.ID, quota.UserPatch{Status: &st}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Authenticate(ctx, issued.Secret); !errors.Is(err, quota.ErrDisabled) {
		t.Fatalf("disabled user: %v", err)
	}

	// Expiry, then revocation.
	clock.Add(2 * time.Hour)
	if _, err := svc.Authenticate(ctx, issued.Secret); !errors.Is(err, quota.ErrUnauthenticated) {
		t.Fatalf("expired token: %v", err)
	}
	clock.Add(-2 * time.Hour)
	if err := svc.RevokeToken(ctx, u.ID, issued.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Authenticate(ctx, issued.Secret); !errors.Is(err, quota.ErrUnauthenticated) {
		t.Fatalf("revoked token: %v", err)
	}
	typo := issued.Secret[:len(issued.Secret)-1] + "0"
	if typo == issued.Secret {
		typo = issued.Secret[:len(issued.Secret)-1] + "1"
	}
	for _, bad := range []string{"", "tq_nope", typo} {
		if _, err := svc.Authenticate(ctx, bad); !errors.Is(err, quota.ErrUnauthenticated) {
			t.Fatalf("%q: %v", bad, err)
		}
	}
}

func TestServiceValidation(t *testing.T) {
	t.Parallel()
	svc, _, _, _ := newService(t)
	ctx := context.Background()
	long := make([]byte, 250)
	for i := range long {
		long[i] = 'a'
	}
	tests := []struct {
		name  string
		in    quota.NewUser
		field string
	}{
		{"no name", quota.NewUser{Email: "a@example.com"}, "name"},
		{"no email", quota.NewUser{Name: "A"}, "email"},
		{"bad email", quota.NewUser{Name: "A", Email: "not-an-email"}, "email"},
		{"email with display name", quota.NewUser{Name: "A", Email: "A <a@example.com>"}, "email"},
		{"email over 255", quota.NewUser{Name: "A", Email: string(long) + "@example.com"}, "email"},
		{"negative credits", quota.NewUser{Name: "A", Email: "a@example.com", Credits: -1}, "credits"},
		{"bad status", quota.NewUser{Name: "A", Email: "a@example.com", Status: "paused"}, "status"},
		{"negative limit", quota.NewUser{Name: "A", Email: "a@example.com", Limits: quota.Limits{"x": {{Limit: -1}}}}, "limits.x"},
		{"external id spaces", quota.NewUser{Name: "A", Email: "a@example.com", ExternalID: " x"}, "externalId"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := svc.CreateUser(ctx, tt.in)
			var ve *quota.ValidationError
			if !errors.As(err, &ve) || ve.Fields[0].Field != tt.field {
				t.Fatalf("want a validation error on %s, got %v", tt.field, err)
			}
		})
	}
}

func TestServiceAdmitAndUsage(t *testing.T) {
	t.Parallel()
	svc, _, _, events := newService(t)
	ctx := context.Background()
	u, err := svc.CreateUser(ctx, quota.NewUser{Name: "A", Email: "a@example.com", Limits: quota.Limits{
		"messages": {{Limit: 10}, {Limit: 2, Per: quota.Minute}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	d, err := svc.AdmitUses(ctx, u, []quota.Use{{Resource: "messages", Amount: 1}})
	if err != nil || d.Tightest == nil || d.Tightest.Limit.Per != quota.Minute || d.Tightest.Remaining() != 1 {
		t.Fatalf("first admission: %+v %v", d, err)
	}
	svc.AdmitUses(ctx, u, []quota.Use{{Resource: "messages", Amount: 1}})
	d, err = svc.AdmitUses(ctx, u, []quota.Use{{Resource: "messages", Amount: 1}})
	var le *quota.LimitError
	if !errors.As(err, &le) || le.State.Limit.Per != quota.Minute || le.State.ResetsAt.IsZero() || d != nil {
		t.Fatalf("third admission in a minute: %+v %v", d, err)
	}
	usage, err := svc.Usage(ctx, u.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(usage.Items) != 2 || usage.Items[0].Per != "lifetime" || usage.Items[0].Used != 2 || *usage.Items[0].Remaining != 8 ||
		usage.Items[1].Per != "minute" || usage.Items[1].ResetsAt == nil {
		t.Fatalf("usage: %+v", usage.Items)
	}
	usage, err = svc.ResetUsage(ctx, u.ID, []string{"messages"})
	if err != nil || usage.Items[0].Used != 0 {
		t.Fatalf("reset: %+v %v", usage, err)
	}
	if _, err := svc.ResetUsage(ctx, u.ID, []string{"Bad Name"}); !errors.Is(err, quota.ErrInvalid) {
		t.Fatalf("reset of a bad resource name: %v", err)
	}
	// The gateway's own counters hold what live reservations and slices
	// hold: zeroing one would let them be spent twice.
	for _, name := range []string{"reserved_tokens", "reserved_slices", "t.x"} {
		if _, err := svc.ResetUsage(ctx, u.ID, []string{name}); !errors.Is(err, quota.ErrInvalid) {
			t.Fatalf("reset of internal counter %s: %v", name, err)
		}
	}
	want := []string{quota.EventUserCreated, quota.EventUsageReset}
	if len(*events) != len(want) {
		t.Fatalf("events: %+v", *events)
	}
	for i, e := range *events {
		if e.Type != want[i] || e.Subject != u.ID {
			t.Fatalf("event %d: %+v", i, e)
		}
	}
}

func TestReservedInUsage(t *testing.T) {
	t.Parallel()
	svc, _, _, _ := newService(t)
	ctx := context.Background()
	u, err := svc.CreateUser(ctx, quota.NewUser{Name: "R", Email: "r@example.com", Limits: quota.Limits{"tokens": {{Limit: 1000}}}})
	if err != nil {
		t.Fatal(err)
	}
	reserved := quota.TokenCount{Input: 10, Output: 100}
	uses := quota.Held(append(reserved.Uses(), reserved.Reserved()...), time.Hour)
	ticket, err := svc.AdmitUses(ctx, u, uses)
	if err != nil {
		t.Fatal(err)
	}
	item := func(usage *quota.Usage, resource string) quota.UsageItem {
		for _, it := range usage.Items {
			if it.Resource == resource && it.Per == "lifetime" {
				return it
			}
		}
		t.Fatalf("no %s in usage %+v", resource, usage.Items)
		return quota.UsageItem{}
	}
	usage, err := svc.Usage(ctx, u.ID)
	if err != nil {
		t.Fatal(err)
	}
	if it := item(usage, "tokens"); it.Used != 110 || it.Reserved != 110 || *it.Remaining != 890 {
		t.Fatalf("in flight: %+v", it)
	}
	for _, it := range usage.Items {
		if strings.HasPrefix(it.Resource, quota.ReservedPrefix) {
			t.Fatalf("a reservation counter is listed as a resource: %+v", it)
		}
	}
	if err := ticket.SettleUses(ctx, quota.TokenCount{Input: 10, Output: 20}.Uses()); err != nil {
		t.Fatal(err)
	}
	usage, _ = svc.Usage(ctx, u.ID)
	if it := item(usage, "tokens"); it.Used != 30 || it.Reserved != 0 {
		t.Fatalf("settled: %+v", it)
	}
	if it := item(usage, "output_tokens"); it.Used != 20 || it.Reserved != 0 {
		t.Fatalf("settled output: %+v", it)
	}
}

// TestTune: a running service takes a new cache TTL (a config reload keeps
// the service but may change its tuning).
func TestTune(t *testing.T) {
	t.Parallel()
	svc, cs, clock, _ := newService(t)
	ctx := context.Background()
	u, err := svc.CreateUser(ctx, quota.NewUser{Name: "T", Email: "t@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	issued, err := svc.CreateToken(ctx, u.ID, quota.NewToken{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Tune(0, 50*time.Millisecond)
	for i := 0; i < 20; i++ { // cached, with the new TTL
		svc.Authenticate(ctx, issued.Secret)
		time.Sleep(2 * time.Millisecond)
	}
	before := cs.tokenLookups.Load()
	// The service's clock (the principals) and ristretto's own (the
	// entries under them) both move on.
	clock.Add(150 * time.Millisecond)
	time.Sleep(150 * time.Millisecond)
	if _, err := svc.Authenticate(ctx, issued.Secret); err != nil {
		t.Fatal(err)
	}
	if cs.tokenLookups.Load() == before {
		t.Fatal("a token cached with a 50ms TTL was still served from the cache after 150ms")
	}
}
