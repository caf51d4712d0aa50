package caddymodule

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/boltstore"
)

// BenchmarkHandlerEmbedded measures one admitted request through the
// tenant_quota handler on a cache hit, against a real embedded store: the
// plugin's own cost and allocations per request (-benchmem).
func BenchmarkHandlerEmbedded(b *testing.B) {
	store, err := boltstore.Open(boltstore.Options{Path: filepath.Join(b.TempDir(), "q.db")})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	svc, err := quota.NewService(quota.Options{Store: store})
	if err != nil {
		b.Fatal(err)
	}
	defer svc.Close()
	ctx := context.Background()
	u, err := svc.CreateUser(ctx, quota.NewUser{Name: "B", Email: "bench@example.com",
		Limits: quota.Limits{"messages": {{Limit: quota.MaxLimit}, {Limit: quota.MaxLimit, Per: quota.Minute}}}})
	if err != nil {
		b.Fatal(err)
	}
	tok, err := svc.CreateToken(ctx, u.ID, quota.NewToken{})
	if err != nil {
		b.Fatal(err)
	}
	app := &App{service: svc, shared: &sharedStore{store: store, service: svc}, logger: zap.NewNop(), OnStoreError: StoreErrorDeny}
	h := &Handler{app: app, logger: zap.NewNop(), TokenHeaders: DefaultTokenHeaders, tokenHeaders: defaultTokenHeaders, UsageHeader: DefaultUsageHeader, route: quota.Route{}.Prepared()}
	on := true
	h.Tokens, h.IncludeUsage = &on, &on
	h.DefaultMaxTokens, h.MaxRequestBody = DefaultMaxTokens, DefaultMaxRequestBody
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(http.StatusOK)
		return nil
	})
	handler := func(w http.ResponseWriter, r *http.Request) error { return h.ServeHTTP(w, r, next) }
	if testing.Verbose() {
		// The harness alone (request, recorder, replacer), to subtract.
		handler = func(w http.ResponseWriter, r *http.Request) error { return next.ServeHTTP(w, r) }
	}
	serve := func() int {
		r := httptest.NewRequest("GET", "/v1/chat", nil)
		r.Header.Set("Authorization", "Bearer "+tok.Secret)
		repl := caddy.NewReplacer()
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
		w := httptest.NewRecorder()
		if err := handler(w, r); err != nil {
			b.Fatal(err)
		}
		return w.Code
	}
	if code := serve(); code != http.StatusOK { // warms the cache
		b.Fatalf("status %d", code)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		serve()
	}
}
