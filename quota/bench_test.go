package quota_test

import (
	"context"
	"testing"
	"time"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// BenchmarkAuthenticateCacheHit measures token validation when the token
// and its user are in the hot cache (no store round trip).
func BenchmarkAuthenticateCacheHit(b *testing.B) {
	svc, _, _, _ := newService(b)
	ctx := context.Background()
	u, err := svc.CreateUser(ctx, quota.NewUser{Name: "B", Email: "b@example.com"})
	if err != nil {
		b.Fatal(err)
	}
	issued, err := svc.CreateToken(ctx, u.ID, quota.NewToken{})
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		svc.Authenticate(ctx, issued.Secret)
		time.Sleep(2 * time.Millisecond)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := svc.Authenticate(ctx, issued.Secret); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAdmitEmbedded measures one admission (a message and a token
// reservation) on the embedded store, with a request id.
func BenchmarkAdmitEmbedded(b *testing.B) {
	svc, _, _, _ := newService(b)
	ctx := context.Background()
	u, err := svc.CreateUser(ctx, quota.NewUser{Name: "B", Email: "b@example.com", Limits: quota.Limits{"messages": {{Limit: quota.MaxLimit}}}})
	if err != nil {
		b.Fatal(err)
	}
	uses := append([]quota.Use{{Resource: "messages", Amount: 1}}, quota.TokenCount{Input: 10, Output: 100}.Uses()...)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := svc.AdmitUses(ctx, u, uses); err != nil {
			b.Fatal(err)
		}
	}
}
