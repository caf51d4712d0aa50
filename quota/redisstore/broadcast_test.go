package redisstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tenantquota/caddy-tenant-quota/internal/redistest"
	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/redisstore"
)

// node is one gateway node's service over a shared Redis.
func node(t *testing.T, srv *redistest.Server) (*quota.Service, *redisstore.Store) {
	t.Helper()
	st, err := redisstore.New(redisstore.Options{Client: srv.Client(t), Timeout: redistest.Timeout})
	if err != nil {
		t.Fatal(err)
	}
	// An hour of cache TTL: only the invalidation messages can make the
	// other node notice a change within the test.
	svc, err := quota.NewService(quota.Options{Store: st, CacheTTL: time.Hour, Broadcaster: st.Broadcaster()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	return svc, st
}

// within polls cond for up to a second and reports how long it took.
func within(t *testing.T, what string, cond func() bool) {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > time.Second {
			t.Fatalf("%s: not seen on the other node within 1s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func warm(t *testing.T, svc *quota.Service, secret string) *quota.Principal {
	t.Helper()
	var p *quota.Principal
	var err error
	for i := 0; i < 20; i++ { // ristretto admits sets asynchronously
		if p, err = svc.Authenticate(context.Background(), secret); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return p
}

func TestCrossNodeInvalidation(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	a, _ := node(t, srv)
	b, storeB := node(t, srv)
	ctx := context.Background()
	u, err := a.CreateUser(ctx, quota.NewUser{Name: "N", Email: "n@example.com", Limits: quota.Limits{"messages": {{Limit: 100}}}})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := a.CreateToken(ctx, u.ID, quota.NewToken{})
	if err != nil {
		t.Fatal(err)
	}
	warm(t, b, tok.Secret)

	// A lowered limit on node A is enforced on node B.
	if _, err := a.PatchLimits(ctx, u.ID, quota.Limits{"messages": {{Limit: 0}}}); err != nil {
		t.Fatal(err)
	}
	within(t, "lowered limit", func() bool {
		p, err := b.Authenticate(ctx, tok.Secret)
		return err == nil && p.User.Limits["messages"][0].Limit == 0
	})

	// A disabled user.
	disabled := quota.StatusDisabled
	if _, err := a.UpdateUser(ctx, u.ID, quota.UserPatch{Status: &disabled}); err != nil {
		t.Fatal(err)
	}
	within(t, "disabled user", func() bool {
		_, err := b.Authenticate(ctx, tok.Secret)
		return errors.Is(err, quota.ErrDisabled)
	})
	active := quota.StatusActive
	if _, err := a.UpdateUser(ctx, u.ID, quota.UserPatch{Status: &active}); err != nil {
		t.Fatal(err)
	}
	within(t, "enabled user", func() bool {
		_, err := b.Authenticate(ctx, tok.Secret)
		return err == nil
	})
	warm(t, b, tok.Secret)

	// A token's own limit lowered, and its expiry brought forward.
	soon := time.Now().Add(time.Hour).UTC().Truncate(time.Millisecond)
	if _, err := a.UpdateToken(ctx, u.ID, tok.ID, quota.TokenPatch{ExpiresAt: &soon, Limits: quota.Limits{"messages": {{Limit: 1}}}}); err != nil {
		t.Fatal(err)
	}
	within(t, "changed token", func() bool {
		p, err := b.Authenticate(ctx, tok.Secret)
		return err == nil && len(p.Token.Limits["messages"]) == 1 && p.Token.Limits["messages"][0].Limit == 1 &&
			p.Token.ExpiresAt != nil && p.Token.ExpiresAt.Equal(soon)
	})
	warm(t, b, tok.Secret)

	// A revoked token.
	if err := a.RevokeToken(ctx, u.ID, tok.ID); err != nil {
		t.Fatal(err)
	}
	within(t, "revoked token", func() bool {
		_, err := b.Authenticate(ctx, tok.Secret)
		return errors.Is(err, quota.ErrUnauthenticated)
	})

	// A deleted user.
	tok2, err := a.CreateToken(ctx, u.ID, quota.NewToken{})
	if err != nil {
		t.Fatal(err)
	}
	warm(t, b, tok2.Secret)
	if err := a.DeleteUser(ctx, u.ID); err != nil {
		t.Fatal(err)
	}
	within(t, "deleted user", func() bool {
		_, err := b.Authenticate(ctx, tok2.Secret)
		return errors.Is(err, quota.ErrUnauthenticated)
	})

	// A message missed while B's subscription was down: when it comes back
	// B flushes its cache.
	u2, err := a.CreateUser(ctx, quota.NewUser{Name: "M", Email: "m@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	tok3, err := a.CreateToken(ctx, u2.ID, quota.NewToken{})
	if err != nil {
		t.Fatal(err)
	}
	warm(t, b, tok3.Secret)
	changed := u2.Clone()
	changed.Status = quota.StatusDisabled
	changed.Revision++
	if err := storeB.UpdateUser(ctx, changed); err != nil { // behind every cache's back
		t.Fatal(err)
	}
	if _, err := b.Authenticate(ctx, tok3.Secret); err != nil {
		t.Fatalf("B should still serve its cached user: %v", err)
	}
	if err := srv.Client(t).Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	within(t, "flush after the subscription reconnected", func() bool {
		_, err := b.Authenticate(ctx, tok3.Secret)
		return errors.Is(err, quota.ErrDisabled)
	})
}
