package admin

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// TestDuplicateKeys: a body with a key twice in one object, at any depth
// and however the key is escaped, is a 400 naming the key's path, and
// changes nothing; the same key in two objects, or inside a string, is
// fine.
func TestDuplicateKeys(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(o *Options) { o.Roles = quota.Roles{"viewer": {"chatbots.read"}} })
	u := e.createUser(t, `{"name": "A", "email": "a@example.com", "limits": {"tokens": 5}}`)
	user := "/users/" + u.ID
	const who = `"name": "X", "email": "x@example.com"`
	tests := []struct {
		name, method, path, body, field string
	}{
		{"two names", "POST", "/users", `{"name": "A", "name": "B", "email": "b@example.com"}`, "name"},
		{"escaped twin", "POST", "/users", `{"name": "A", "n\u0061me": "B", "email": "b@example.com"}`, "name"},
		{"case twin", "POST", "/users", `{"name": "A", "NAME": "B", "email": "b@example.com"}`, "NAME"},
		{"nested limit", "POST", "/users", `{` + who + `, "limits": {"tokens": 5, "tokens": 9000}}`, "limits.tokens"},
		{"escaped nested limit", "POST", "/users", `{` + who + `, "limits": {"max_tokens": 5, "max\u005ftokens": 9000}}`, "limits.max_tokens"},
		{"inside a limit object", "POST", "/users", `{` + who + `, "limits": {"messages": {"limit": 5, "limit": 9000, "per": "day"}}}`, "limits.messages.limit"},
		{"inside a list of limits", "POST", "/users", `{` + who + `, "limits": {"messages": [{"limit": 5, "per": "minute", "per": "day"}]}}`, "limits.messages[0].per"},
		{"patch user", "PATCH", user, `{"email": "c@example.com", "email": "d@example.com"}`, "email"},
		{"patch user limits", "PATCH", user, `{"limits": {"tokens": 1, "tokens": 2}}`, "limits.tokens"},
		{"put limits", "PUT", user + "/limits", `{"tokens": 5, "tokens": 9000}`, "limits.tokens"},
		{"patch limits", "PATCH", user + "/limits", `{"tokens": 5, "tokens": 9000}`, "limits.tokens"},
		{"token name", "POST", user + "/tokens", `{"name": "a", "name": "b"}`, "name"},
		{"token limits", "POST", user + "/tokens", `{"limits": {"tokens": 1, "tokens": 2}}`, "limits.tokens"},
		{"role", "POST", user + "/roles", `{"role": "viewer", "resource": "*", "resource": "chatbots/a"}`, "resource"},
		{"reset", "POST", user + "/usage/reset", `{"resources": ["tokens"], "resources": ["messages"]}`, "resources"},
		{"credits", "POST", user + "/credits", `{"amount": 1, "amount": 1000000}`, "amount"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := problem(t, e.do(t, req{method: tt.method, path: tt.path, body: tt.body}), http.StatusBadRequest, tt.field)
			if !strings.Contains(p.Detail, "more than once") {
				t.Fatalf("detail %q does not say the key appears more than once", p.Detail)
			}
		})
	}
	got, err := e.svc.GetUser(context.Background(), u.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Email != "a@example.com" || got.Credits != 0 || len(got.Limits["tokens"]) != 1 || got.Limits["tokens"][0].Limit != 5 {
		t.Fatalf("a refused body changed the user: %+v", got)
	}

	for name, body := range map[string]string{
		"same key in sibling objects": `{"name": "S", "email": "s@example.com", "limits": {"tokens": {"limit": 1}, "messages": {"limit": 2}}}`,
		"key-like text in a string":   `{"name": "{\"name\": 1, \"name\": 2}", "email": "t@example.com"}`,
		"names that differ in case":   `{"name": "U", "email": "u@example.com", "limits": {"tokens": 1, "Tokens": 2}}`,
	} {
		t.Run(name, func(t *testing.T) {
			r := e.do(t, req{method: "POST", path: "/users", body: body})
			if name == "names that differ in case" {
				// Refused, naming the key: Go would match both to one
				// field, so they are duplicates as well as a bad name.
				problem(t, r, http.StatusBadRequest, "limits.Tokens")
				return
			}
			if r.status != http.StatusCreated {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
		})
	}
}
