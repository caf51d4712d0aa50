package caddymodule

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tenantquota/caddy-tenant-quota/internal/quotatest"
	"github.com/tenantquota/caddy-tenant-quota/internal/redistest"
	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// TestClientGoneWhileTheStoreAnswers: a client that hangs up while the
// gateway waits for Redis (authentication or admission) is no store
// failure: no ERROR line, no 503 in the access log (499), nothing
// forwarded, nothing admitted by on_store_error allow. Found by TestTorture
// (seed 1796346725272721627): "quota store unavailable: admit: context
// canceled" logged at ERROR with no fault injected.
func TestClientGoneWhileTheStoreAnswers(t *testing.T) {
	for _, onError := range []string{StoreErrorDeny, StoreErrorAllow} {
		t.Run("on_store_error "+onError, func(t *testing.T) {
			store, svc := quotatest.Redis(t, redistest.Start(t))
			core, logs := observer.New(zap.WarnLevel)
			hs := newHarnessOn(t, store, svc, quota.Limits{"messages": {{Limit: 100}}}, func(h *Handler, app *App) {
				h.logger = zap.New(core)
				app.logger = zap.New(core)
				app.OnStoreError = onError
			})
			gone := func() *httptest.ResponseRecorder {
				ctx, cancel := context.WithCancel(context.WithValue(context.Background(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
				cancel()
				r := httptest.NewRequest("POST", "/v1/x", strings.NewReader(`{}`)).WithContext(ctx)
				r.Header.Set("Authorization", "Bearer "+hs.secret)
				w := httptest.NewRecorder()
				if err := hs.h.ServeHTTP(w, r, caddyhttp.HandlerFunc(hs.backend)); err != nil {
					t.Fatal(err)
				}
				return w
			}
			// Authentication: the token is not cached yet.
			if w := gone(); w.Code != statusClientClosedRequest {
				t.Fatalf("hang-up during authentication: %d %s", w.Code, w.Body)
			}
			// Admission: the token is cached, the user has no slice yet.
			if _, err := svc.Authenticate(context.Background(), hs.secret); err != nil {
				t.Fatal(err)
			}
			if w := gone(); w.Code != statusClientClosedRequest {
				t.Fatalf("hang-up during admission: %d %s", w.Code, w.Body)
			}
			// The self-service usage handler answers the same way.
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			r := httptest.NewRequest("GET", "/usage", nil).WithContext(ctx)
			r.Header.Set("Authorization", "Bearer "+hs.secret)
			w := httptest.NewRecorder()
			if err := (&UsageHandler{app: hs.h.app}).ServeHTTP(w, r, nil); err != nil || w.Code != statusClientClosedRequest {
				t.Fatalf("hang-up during a usage read: %d %v", w.Code, err)
			}
			if hs.served != 0 {
				t.Fatalf("%d requests of clients gone reached the backend", hs.served)
			}
			for _, e := range logs.All() {
				t.Errorf("logged at %s: %s %v", e.Level, e.Message, e.ContextMap())
			}
			if w := hs.do("POST", "/v1/x", `{}`); w.Code != 200 {
				t.Fatalf("a client that stays: %d %s", w.Code, w.Body)
			}
			use, err := svc.Usage(context.Background(), hs.user)
			if err != nil {
				t.Fatal(err)
			}
			for _, it := range use.Items {
				if it.Resource == "messages" && it.Per == "lifetime" && it.Used != 1 {
					t.Fatalf("messages used %d, want 1: the clients gone must not count", it.Used)
				}
			}
		})
	}
}
