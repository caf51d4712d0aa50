package admin

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/boltstore"
)

const (
	testKey  = "admin-key-one-0123456789abcdef"
	testKey2 = "admin-key-two-fedcba9876543210"
)

// env is one admin handler over a real embedded store.
type env struct {
	svc   *quota.Service
	store quota.Store
	h     *Handler
}

func newEnv(tb testing.TB, configure ...func(*Options)) *env {
	tb.Helper()
	store, err := boltstore.Open(boltstore.Options{Path: filepath.Join(tb.TempDir(), "q.db")})
	if err != nil {
		tb.Fatalf("opening store: %v", err)
	}
	return newEnvOn(tb, store, configure...)
}

// newEnvOn is newEnv over a given store, which it closes at the end.
func newEnvOn(tb testing.TB, store quota.Store, configure ...func(*Options)) *env {
	tb.Helper()
	svc, err := quota.NewService(quota.Options{Store: store})
	if err != nil {
		tb.Fatalf("creating service: %v", err)
	}
	tb.Cleanup(func() {
		_ = svc.Close()
		_ = store.Close()
	})
	opts := Options{Service: svc, Keys: []string{testKey, testKey2}, Logger: zap.NewNop()}
	for _, c := range configure {
		c(&opts)
	}
	h, err := New(opts)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	return &env{svc: svc, store: store, h: h}
}

// resp is a recorded response.
type resp struct {
	status int
	header http.Header
	body   []byte
}

// decode unmarshals the body into v.
func (r resp) decode(tb testing.TB, v any) {
	tb.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		tb.Fatalf("decoding %s: %v", r.body, err)
	}
}

// req is one request to the handler.
type req struct {
	method, path, body string
	key                string // "" means testKey; "-" means no Authorization
	contentType        string // "" means application/json when there is a body; "-" means none
}

func (e *env) do(tb testing.TB, q req) resp {
	tb.Helper()
	var body io.Reader
	if q.body != "" {
		body = strings.NewReader(q.body)
	}
	r := httptest.NewRequest(q.method, q.path, body)
	switch q.key {
	case "":
		r.Header.Set("Authorization", "Bearer "+testKey)
	case "-":
	default:
		r.Header.Set("Authorization", q.key)
	}
	switch {
	case q.contentType == "-":
	case q.contentType != "":
		r.Header.Set("Content-Type", q.contentType)
	case q.body != "":
		r.Header.Set("Content-Type", "application/json")
	}
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, r)
	// Every exchange of the tests is checked against the OpenAPI document.
	checkOpenAPI(tb, r, []byte(q.body), w)
	return resp{status: w.Code, header: w.Result().Header, body: w.Body.Bytes()}
}

// call does a request and checks its status.
func (e *env) call(tb testing.TB, method, path, body string, want int) resp {
	tb.Helper()
	got := e.do(tb, req{method: method, path: path, body: body})
	if got.status != want {
		tb.Fatalf("%s %s: status %d, want %d; body %s", method, path, got.status, want, got.body)
	}
	return got
}

// createUser creates a user through the API.
func (e *env) createUser(tb testing.TB, body string) *quota.User {
	tb.Helper()
	var out struct {
		User *quota.User `json:"user"`
	}
	e.call(tb, "POST", "/users", body, http.StatusCreated).decode(tb, &out)
	return out.User
}

// problem checks that r is a problem+json response with status and, unless
// field is "", an entry in errors for field. It returns the problem.
func problem(tb testing.TB, r resp, status int, field string) Problem {
	tb.Helper()
	if r.status != status {
		tb.Fatalf("status %d, want %d; body %s", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		tb.Fatalf("Content-Type %q, want application/problem+json", ct)
	}
	var p Problem
	r.decode(tb, &p)
	if p.Status != status || p.Type == "" || p.Title == "" || p.Detail == "" {
		tb.Fatalf("incomplete problem: %s", r.body)
	}
	if field != "" {
		found := false
		for _, f := range p.Errors {
			if f.Field == field && f.Detail != "" {
				found = true
			}
		}
		if !found {
			tb.Fatalf("problem does not name field %q: %s", field, r.body)
		}
	}
	return p
}
