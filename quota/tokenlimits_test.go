package quota_test

import (
	"context"
	"errors"
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
