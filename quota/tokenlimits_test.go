package quota_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// TestTokenLimitSetLater: a token counts its lifetime use of every
// resource, limited or not, so a lifetime limit put on it afterwards
// (PATCH) holds against everything it used before — an operator capping
// a runaway app's token is not handed a fresh budget. The usage report
// shows that use.
func TestTokenLimitSetLater(t *testing.T) {
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
