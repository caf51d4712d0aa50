package caddymodule

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestAdminRefusesPlainHTTPFromAfar(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	tests := []struct {
		name       string
		remote     string
		tls        bool
		allowPlain bool
		want       int
	}{
		{"loopback v4", "127.0.0.1:5000", false, false, http.StatusNoContent},
		{"loopback v6", "[::1]:5000", false, false, http.StatusNoContent},
		{"loopback mapped", "[::ffff:127.0.0.1]:5000", false, false, http.StatusNoContent},
		{"remote plain", "203.0.113.9:5000", false, false, http.StatusForbidden},
		{"private plain", "10.1.2.3:5000", false, false, http.StatusForbidden},
		{"remote over TLS", "203.0.113.9:5000", true, false, http.StatusNoContent},
		{"remote plain, opted in", "203.0.113.9:5000", false, true, http.StatusNoContent},
		{"garbage peer", "nonsense", false, false, http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &AdminHandler{api: ok, AllowPlainHTTP: tt.allowPlain}
			r := httptest.NewRequest("GET", "/users", nil)
			r.RemoteAddr = tt.remote
			if tt.tls {
				r.TLS = &tls.ConnectionState{}
			}
			w := httptest.NewRecorder()
			if err := h.ServeHTTP(w, r, nil); err != nil {
				t.Fatal(err)
			}
			if w.Code != tt.want {
				t.Fatalf("status %d, want %d", w.Code, tt.want)
			}
			if w.Code == http.StatusForbidden && w.Header().Get("Content-Type") != "application/problem+json" {
				t.Fatalf("refusal is not problem+json: %v", w.Header())
			}
		})
	}
}
