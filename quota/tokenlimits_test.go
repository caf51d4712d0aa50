package quota_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// TestTokenLimitSetLater: a token counts its lifetime use of every
// resource, limited or not, so a lifetime limit put on it afterwards
// (PATCH) holds against everything it used before — an operator capping
// a runaway app's token is not handed a fresh budget. The usage report
// shows that use.
func TestTokenLimitSetLater(t *testing.T) {
	t.Parallel()
	svc, _, _, _ := newService(t)
	ctx := context.Background()
	u, err := svc.CreateUser(ctx, quota.NewUser{Name: "T", Email: "t@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	issued, err := svc.CreateToken(ctx, u.ID, quota.NewToken{Name: "app"})
	if err != nil {
		t.Fatal(err)
	}
	admit := func() error {
		p, err := svc.Authenticate(ctx, issued.Secret)
		if err != nil {
			t.Fatal(err)
		}
		_, err = svc.AdmitToken(ctx, p.User, p.Token, (&quota.Route{}).Plan(quota.MeterUses{}, quota.TokenRequest{}))
		return err
	}
	for range 5 {
		if err := admit(); err != nil {
			t.Fatal(err)
		}
	}
	use, err := svc.TokenUsage(ctx, u.ID, issued.ID)
	if err != nil || len(use.Items) != 1 || use.Items[0].Resource != "messages" || use.Items[0].Used != 5 || use.Items[0].Limit != nil {
		t.Fatalf("an unlimited token's usage: %+v %v", use, err)
	}

	if _, err := svc.UpdateToken(ctx, u.ID, issued.ID, quota.TokenPatch{Limits: quota.Limits{"messages": {{Limit: 5}}}}); err != nil {
		t.Fatal(err)
	}
	err = admit()
	if le, ok := errors.AsType[*quota.LimitError](err); !ok || le.State.Token != issued.ID || le.State.Used != 5 {
		t.Fatalf("after a lifetime limit of 5 on a token that used 5: %v, want the token's limit", err)
	}
	use, err = svc.TokenUsage(ctx, u.ID, issued.ID)
	if err != nil || len(use.Items) != 1 || use.Items[0].Used != 5 || use.Items[0].Limit == nil || *use.Items[0].Remaining != 0 {
		t.Fatalf("a limited token's usage: %+v %v", use, err)
	}

	// Raised, it admits again, counted on.
	if _, err := svc.UpdateToken(ctx, u.ID, issued.ID, quota.TokenPatch{Limits: quota.Limits{"messages": {{Limit: 6}}}}); err != nil {
		t.Fatal(err)
	}
	if err := admit(); err != nil {
		t.Fatal(err)
	}
	if err := admit(); err == nil {
		t.Fatal("a seventh message of a token limited to 6 was admitted")
	}
}

// TestTokenKeyedUseNeedsALimit: a distinct-key use (a conversation) of a
// token with no limit on it is counted for the user only: counting it for
// the token too took a second place per key in the user's distinct-key
// cap, so the cap was reached at half the conversations (found by review).
func TestTokenKeyedUseNeedsALimit(t *testing.T) {
	t.Parallel()
	svc, _, _, _ := newService(t)
	ctx := context.Background()
	u, err := svc.CreateUser(ctx, quota.NewUser{Name: "K", Email: "k@example.com", Limits: quota.Limits{"conversations": {{Limit: 100}}}})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := svc.CreateToken(ctx, u.ID, quota.NewToken{})
	if err != nil {
		t.Fatal(err)
	}
	limited, err := svc.CreateToken(ctx, u.ID, quota.NewToken{Limits: quota.Limits{"conversations": {{Limit: 5}}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []*quota.IssuedToken{plain, limited} {
		p, err := svc.Authenticate(ctx, tok.Secret)
		if err != nil {
			t.Fatal(err)
		}
		uses := quota.MeterUses{Admit: []quota.Use{{Resource: "conversations", Amount: 1, Key: "c-" + tok.ID}}}
		if _, err := svc.AdmitToken(ctx, p.User, p.Token, (&quota.Route{}).Plan(uses, quota.TokenRequest{})); err != nil {
			t.Fatal(err)
		}
	}
	if use, err := svc.TokenUsage(ctx, u.ID, plain.ID); err != nil || len(use.Items) != 1 || use.Items[0].Resource != "messages" {
		t.Fatalf("a token with no conversations limit: %+v %v, want its messages only", use, err)
	}
	if use, err := svc.TokenUsage(ctx, u.ID, limited.ID); err != nil || !slices.ContainsFunc(use.Items, func(it quota.UsageItem) bool { return it.Resource == "conversations" && it.Used == 1 }) {
		t.Fatalf("a token with a conversations limit: %+v %v", use, err)
	}
}

// TestLimitCapKeepsOlderUsersChangeable: the cap on limited resources
// refuses only a change that grows limits past it; a user stored with more
// (before the cap) can still be disabled, topped up and trimmed (found by
// review: every change to such a user was a 400).
func TestLimitCapKeepsOlderUsersChangeable(t *testing.T) {
	t.Parallel()
	svc, cs, _, _ := newService(t)
	ctx := context.Background()
	u, err := svc.CreateUser(ctx, quota.NewUser{Name: "Old", Email: "old@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	many := quota.Limits{}
	for i := range quota.MaxLimitedResources + 44 {
		many[fmt.Sprintf("r%d", i)] = []quota.Limit{{Limit: 1}}
	}
	if _, err := svc.PatchLimits(ctx, u.ID, many); !errors.Is(err, quota.ErrInvalid) {
		t.Fatalf("growing limits past the cap: %v, want invalid", err)
	}
	stored := u.Clone()
	stored.Limits, stored.Revision = many, u.Revision+1
	if err := cs.Store.UpdateUser(ctx, stored); err != nil { // as an older version stored it
		t.Fatal(err)
	}
	disabled := quota.StatusDisabled
	if _, err := svc.UpdateUser(ctx, u.ID, quota.UserPatch{Status: &disabled}); err != nil {
		t.Fatalf("disabling a user stored with %d limits: %v", len(many), err)
	}
	if _, err := svc.PatchLimits(ctx, u.ID, quota.Limits{"r0": nil}); err != nil {
		t.Fatalf("trimming: %v", err)
	}
	if _, err := svc.PatchLimits(ctx, u.ID, quota.Limits{"another": {{Limit: 1}}}); !errors.Is(err, quota.ErrInvalid) {
		t.Fatalf("adding one more: %v, want invalid", err)
	}
}

// lateDelete is a real store whose DeleteToken lands but answers as if it
// timed out (Redis finished the script after the client's deadline).
type lateDelete struct{ quota.Store }

func (s lateDelete) DeleteToken(ctx context.Context, userID, tokenID string, events ...quota.Event) (*quota.Token, error) {
	if _, err := s.Store.DeleteToken(ctx, userID, tokenID, events...); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("delete token: %w", context.DeadlineExceeded)
}

// TestRevokeThatTimesOutStillClearsTheCache: a revocation that lands but
// answers with an error clears the caches all the same; the retry finds
// nothing (404) and the token no longer authenticates (found by review:
// it stayed cached, admitted, for the cache TTL).
func TestRevokeThatTimesOutStillClearsTheCache(t *testing.T) {
	t.Parallel()
	_, cs, _, _ := newService(t)
	svc, err := quota.NewService(quota.Options{Store: lateDelete{cs.Store}, CacheTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	ctx := context.Background()
	u, err := svc.CreateUser(ctx, quota.NewUser{Name: "R", Email: "r@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := svc.CreateToken(ctx, u.ID, quota.NewToken{})
	if err != nil {
		t.Fatal(err)
	}
	for range 20 { // ristretto admits sets asynchronously
		if _, err := svc.Authenticate(ctx, tok.Secret); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err := svc.RevokeToken(ctx, u.ID, tok.ID); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the revocation: %v", err)
	}
	if err := svc.RevokeToken(ctx, u.ID, tok.ID); !errors.Is(err, quota.ErrNotFound) {
		t.Fatalf("its retry: %v, want not found", err)
	}
	if _, err := svc.Authenticate(ctx, tok.Secret); !errors.Is(err, quota.ErrUnauthenticated) {
		t.Fatalf("a revoked token after a revocation that timed out: %v, want unauthenticated", err)
	}
}

// lateUpdate is a real store whose UpdateToken and UpdateUser land but
// answer as if they timed out.
type lateUpdate struct{ quota.Store }

func (s lateUpdate) UpdateToken(ctx context.Context, t *quota.Token, events ...quota.Event) error {
	if err := s.Store.UpdateToken(ctx, t, events...); err != nil {
		return err
	}
	return fmt.Errorf("update token: %w", context.DeadlineExceeded)
}

func (s lateUpdate) UpdateUser(ctx context.Context, u *quota.User, events ...quota.Event) error {
	if err := s.Store.UpdateUser(ctx, u, events...); err != nil {
		return err
	}
	return fmt.Errorf("update user: %w", context.DeadlineExceeded)
}

// TestChangeThatTimesOutStillClearsTheCache: a token change or a disable
// that lands but answers with an error leaves no cache serving the token
// or the user as they were.
func TestChangeThatTimesOutStillClearsTheCache(t *testing.T) {
	t.Parallel()
	_, cs, _, _ := newService(t)
	plain, err := quota.NewService(quota.Options{Store: cs.Store})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plain.Close() })
	svc, err := quota.NewService(quota.Options{Store: lateUpdate{cs.Store}, CacheTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	ctx := context.Background()
	u, err := plain.CreateUser(ctx, quota.NewUser{Name: "C", Email: "c@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := plain.CreateToken(ctx, u.ID, quota.NewToken{})
	if err != nil {
		t.Fatal(err)
	}
	warm := func() {
		for range 20 { // ristretto admits sets asynchronously
			if _, err := svc.Authenticate(ctx, tok.Secret); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	warm()
	if _, err := svc.UpdateToken(ctx, u.ID, tok.ID, quota.TokenPatch{Limits: quota.Limits{"messages": {{Limit: 0}}}}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the change: %v", err)
	}
	if p, err := svc.Authenticate(ctx, tok.Secret); err != nil || len(p.Token.Limits["messages"]) != 1 {
		t.Fatalf("after a token change that timed out: %+v %v, want its new limit", p, err)
	}
	warm()
	disabled := quota.StatusDisabled
	if _, err := svc.UpdateUser(ctx, u.ID, quota.UserPatch{Status: &disabled}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the disable: %v", err)
	}
	if _, err := svc.Authenticate(ctx, tok.Secret); !errors.Is(err, quota.ErrDisabled) {
		t.Fatalf("after a disable that timed out: %v, want disabled", err)
	}
}
