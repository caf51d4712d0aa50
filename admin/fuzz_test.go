package admin

import (
	"encoding/json"
	"net/http"
	"testing"
)

// FuzzAdminJSON feeds arbitrary bodies to the two endpoints that decode the
// richest JSON. Whatever arrives, the answer is a client error or success,
// never a 5xx, and its body is valid JSON.
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
		}
	})
}
