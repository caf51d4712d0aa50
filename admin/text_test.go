package admin

import (
	"context"
	"net/http"
	"testing"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// TestFreeTextFields: names (users', tokens') and role resources refuse
// control characters, bidi and other invisible format characters, line
// separators and invalid UTF-8, naming the field, as emails and external
// ids do; ordinary text in any script is kept.
func TestFreeTextFields(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(o *Options) { o.Roles = quota.Roles{"viewer": {"chatbots.read"}} })
	u := e.createUser(t, `{"name": "Zoë 李 O'Brien-Smith", "email": "a@example.com"}`)
	if u.Name != "Zoë 李 O'Brien-Smith" {
		t.Fatalf("name stored as %q", u.Name)
	}
	user := "/users/" + u.ID
	bad := map[string]string{
		"NUL":                    `a\u0000b`,
		"CR LF":                  `a\r\nX-Injected: 1`,
		"LF":                     `line\nbreak`,
		"tab":                    `a\tb`,
		"escape":                 `\u001b[31mred`,
		"DEL":                    `a\u007fb`,
		"C1 control":             `a\u0085b`,
		"right-to-left override": `evil\u202etxt.exe`,
		"bidi isolate":           `a\u2066b\u2069`,
		"zero-width space":       `a\u200bb`,
		"byte order mark":        `\ufeffname`,
		"line separator":         `a\u2028b`,
		"paragraph separator":    `a\u2029b`,
		"invalid UTF-8":          "a\xff\xfeb",
	}
	for what, s := range bad {
		t.Run(what, func(t *testing.T) {
			for _, tc := range []struct{ method, path, body, field string }{
				{"POST", "/users", `{"name": "` + s + `", "email": "n@example.com"}`, "name"},
				{"PATCH", user, `{"name": "` + s + `"}`, "name"},
				{"POST", user + "/tokens", `{"name": "` + s + `"}`, "name"},
				{"POST", "/users", `{"name": "N", "email": "n@example.com", "issueToken": true, "tokenName": "` + s + `"}`, "tokenName"},
				{"POST", user + "/roles", `{"role": "viewer", "resource": "chatbots/` + s + `"}`, "resource"},
			} {
				problem(t, e.do(t, req{method: tc.method, path: tc.path, body: tc.body}), http.StatusBadRequest, tc.field)
			}
		})
	}
	// Nothing was created or changed by the refused requests.
	if _, err := e.svc.GetUserByEmail(context.Background(), "n@example.com"); err == nil {
		t.Fatal("a user with a refused name or token name was created")
	}
	got, err := e.svc.GetUser(context.Background(), u.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != u.Name || len(got.Roles) != 0 {
		t.Fatalf("a refused body changed the user: %+v", got)
	}
	if ts, _ := e.svc.ListTokens(context.Background(), u.ID); len(ts) != 0 {
		t.Fatalf("a token with a refused name was created: %+v", ts)
	}
	// Ordinary text is fine everywhere.
	e.call(t, "POST", user+"/tokens", `{"name": "CI — déploiement 🚀"}`, http.StatusCreated)
	e.call(t, "POST", user+"/roles", `{"role": "viewer", "resource": "chatbots/café"}`, http.StatusCreated)
}
