package admin

import (
	"encoding/json"
	"net/http"
	"testing"
	"unicode/utf8"

	"github.com/tenantquota/caddy-tenant-quota/internal/strictjson"
)

// FuzzAdminJSON feeds arbitrary bodies to the two endpoints that decode the
// richest JSON. Whatever arrives, the answer is a client error or success,
// never a 5xx, and its body is valid JSON; a body with a key twice in one
// object, or with bytes that are not UTF-8, is never accepted.
func FuzzAdminJSON(f *testing.F) {
	for _, seed := range []string{
		`{"name": "A", "email": "a@example.com"}`,
		`{"name": "A", "email": "A@Example.com", "externalId": "x", "credits": 5, "status": "disabled"}`,
		`{"name": "A", "email": "a@example.com", "limits": {"tokens": 5, "messages": [{"limit": 1, "per": "minute"}, {"limit": 9, "per": "day"}]}}`,
		`{"name": "A", "email": "a@example.com", "issueToken": true, "tokenName": "t", "tokenExpiresAt": "2999-01-01T00:00:00Z"}`,
		`{"tokens": null, "files": {"limit": 3}}`,
		`{"tokens": [], "x": {"limit": -1, "per": "week"}}`,
		`{"limits": {"tokens": "1e3"}}`,
		`{"a": 1} {"b": 2}`,
		`[1, 2, 3]`,
		`null`,
		`"string"`,
		`{"name": "\ud800", "email": "\u0000@x.y"}`,
		`{"tokens": 1125899906842625}`,
		`{"tokens": 1.0}`,
		`{`,
		``,
		`{"name": "A", "name": "B", "email": "a@example.com"}`,
		`{"name": "A", "email": "a@example.com", "limits": {"tokens": 5, "tok\u0065ns": 9000}}`,
		`{"tokens": {"limit": 1, "per": "day", "per": "minute"}}`,
		`{"messages": [{"limit": 1}, {"limit": 2, "limit": 3}]}`,
		`{"reserved_slices": 0, "t.x": 1, "~due": 2}`,
		"{\"name\": \"a\xffb\", \"email\": \"a@example.com\"}",
		`{"name": "a\u202eb\u2028", "email": "a@example.com"}`,
	} {
		f.Add(seed)
	}
	e := newEnv(f)
	u := e.createUser(f, `{"name": "Fuzz", "email": "fuzz@example.com"}`)
	targets := []struct{ method, path string }{
		{"POST", "/users"},
		{"PATCH", "/users/" + u.ID + "/limits"},
	}
	f.Fuzz(func(t *testing.T, body string) {
		for _, tg := range targets {
			r := e.do(t, req{method: tg.method, path: tg.path, body: body, contentType: "application/json"})
			if r.status >= 500 {
				t.Fatalf("%s %s with %q: status %d: %s", tg.method, tg.path, body, r.status, r.body)
			}
			if r.status != http.StatusNoContent && !json.Valid(r.body) {
				t.Fatalf("%s %s with %q: invalid JSON response %q", tg.method, tg.path, body, r.body)
			}
			if json.Valid([]byte(body)) && r.status < 300 {
				if d := strictjson.FindDuplicate([]byte(body)); d != nil {
					t.Fatalf("%s %s with %q: %d for a body with a duplicate key (%v)", tg.method, tg.path, body, r.status, d)
				}
				if !utf8.ValidString(body) {
					t.Fatalf("%s %s with %q: %d for a body that is not UTF-8", tg.method, tg.path, body, r.status)
				}
			}
		}
	})
}
