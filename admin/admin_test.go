package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

func TestNew(t *testing.T) {
	t.Parallel()
	svc := newEnv(t).svc
	tests := []struct {
		name string
		opts Options
		ok   bool
	}{
		{"no service", Options{Keys: []string{testKey}}, false},
		{"no keys", Options{Service: svc}, false},
		{"empty key", Options{Service: svc, Keys: []string{testKey, ""}}, false},
		{"blank key", Options{Service: svc, Keys: []string{"  "}}, false},
		{"key with spaces around", Options{Service: svc, Keys: []string{" " + testKey}}, false},
		{"one key", Options{Service: svc, Keys: []string{testKey}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := New(tt.opts)
			if (err == nil) != tt.ok {
				t.Fatalf("New: err = %v, want ok = %v", err, tt.ok)
			}
			if err != nil && strings.Contains(err.Error(), testKey) {
				t.Fatalf("error reveals the key: %v", err)
			}
			if tt.ok && h.maxBody != DefaultMaxBodyBytes {
				t.Fatalf("maxBody = %d, want the default", h.maxBody)
			}
		})
	}
}

func TestAuth(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tests := []struct {
		name   string
		header string
		status int
	}{
		{"no header", "-", http.StatusUnauthorized},
		{"wrong key", "Bearer not-the-key", http.StatusUnauthorized},
		{"prefix of the key", "Bearer " + testKey[:10], http.StatusUnauthorized},
		{"basic scheme", "Basic " + testKey, http.StatusUnauthorized},
		{"scheme only", "Bearer", http.StatusUnauthorized},
		{"first key", "Bearer " + testKey, http.StatusOK},
		{"second key for rotation", "Bearer " + testKey2, http.StatusOK},
		{"scheme is case-insensitive", "bearer " + testKey, http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do(t, req{method: "GET", path: "/users", key: tt.header})
			if tt.status == http.StatusOK {
				if r.status != http.StatusOK {
					t.Fatalf("status %d, want 200: %s", r.status, r.body)
				}
				return
			}
			problem(t, r, tt.status, "")
			if got := r.header.Get("WWW-Authenticate"); !strings.HasPrefix(got, `Bearer realm="tenant_quota_admin"`) {
				t.Fatalf("WWW-Authenticate = %q", got)
			}
		})
	}
	t.Run("unknown path is 401 before 404", func(t *testing.T) {
		problem(t, e.do(t, req{method: "GET", path: "/nope", key: "-"}), http.StatusUnauthorized, "")
	})
}

func TestKeysAndSecretsAreNeverLogged(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.DebugLevel)
	e := newEnv(t, func(o *Options) { o.Logger = zap.New(core) })
	e.do(t, req{method: "GET", path: "/users", key: "Bearer wrong-" + testKey})
	var created struct {
		Token quota.IssuedToken `json:"token"`
	}
	e.call(t, "POST", "/users", `{"name": "A", "email": "a@example.com", "issueToken": true}`, http.StatusCreated).decode(t, &created)
	// A closed store makes every request fail: the 500 path logs.
	_ = e.store.Close()
	p := problem(t, e.do(t, req{method: "GET", path: "/users"}), http.StatusInternalServerError, "")
	if strings.Contains(p.Detail, "database") || strings.Contains(p.Detail, "bolt") {
		t.Fatalf("500 detail leaks the cause: %q", p.Detail)
	}
	if logs.FilterMessage("admin request failed").Len() != 1 {
		t.Fatalf("the 500 was not logged: %v", logs.All())
	}
	for _, entry := range logs.All() {
		text := entry.Message + fmt.Sprint(entry.ContextMap())
		for _, secret := range []string{testKey, testKey2, created.Token.Secret} {
			if strings.Contains(text, secret) {
				t.Fatalf("a secret was logged: %q", text)
			}
		}
	}
}

func TestUserCRUD(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var created createUserResponse
	r := e.call(t, "POST", "/users", `{
		"name": " Ada Lovelace ",
		"email": "Ada@Example.COM",
		"externalId": "crm-1",
		"limits": {"tokens": 100000, "messages": {"limit": 60, "per": "minute"}},
		"credits": 500
	}`, http.StatusCreated)
	r.decode(t, &created)
	u := created.User
	if created.Token != nil || strings.Contains(string(r.body), `"token"`) {
		t.Fatalf("token issued without issueToken: %s", r.body)
	}
	if u.ID == "" || u.Name != "Ada Lovelace" || u.Email != "ada@example.com" || u.ExternalID != "crm-1" ||
		u.Status != quota.StatusActive || u.Credits != 500 || len(u.Limits) != 2 {
		t.Fatalf("created user = %+v", u)
	}
	if got := r.header.Get("Location"); got != "users/"+u.ID {
		t.Fatalf("Location = %q", got)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type = %q", ct)
	}
	var raw map[string]map[string]any
	r.decode(t, &raw)
	if _, err := time.Parse(time.RFC3339, raw["user"]["createdAt"].(string)); err != nil {
		t.Fatalf("createdAt is not RFC 3339: %v", err)
	}

	t.Run("get", func(t *testing.T) {
		var got quota.User
		e.call(t, "GET", "/users/"+u.ID, "", http.StatusOK).decode(t, &got)
		if got.ID != u.ID || got.Email != u.Email || got.Limits["messages"][0].Per != quota.Minute {
			t.Fatalf("got %+v, want %+v", got, u)
		}
	})
	t.Run("patch", func(t *testing.T) {
		var got quota.User
		e.call(t, "PATCH", "/users/"+u.ID, `{
			"name": "Ada King",
			"email": "ada@king.example",
			"limits": {"tokens": null, "files": 10},
			"status": "disabled"
		}`, http.StatusOK).decode(t, &got)
		if got.Name != "Ada King" || got.Email != "ada@king.example" || got.ExternalID != "crm-1" || got.Status != quota.StatusDisabled {
			t.Fatalf("patched user = %+v", got)
		}
		if _, ok := got.Limits["tokens"]; ok {
			t.Fatalf("null did not remove tokens: %v", got.Limits)
		}
		if got.Limits["files"][0].Limit != 10 || got.Limits["messages"][0].Limit != 60 {
			t.Fatalf("limits not merged: %v", got.Limits)
		}
		if !got.UpdatedAt.After(got.CreatedAt) && !got.UpdatedAt.Equal(got.CreatedAt) {
			t.Fatalf("updatedAt %v before createdAt %v", got.UpdatedAt, got.CreatedAt)
		}
	})
	t.Run("patch clears external id", func(t *testing.T) {
		var got quota.User
		e.call(t, "PATCH", "/users/"+u.ID, `{"externalId": ""}`, http.StatusOK).decode(t, &got)
		if got.ExternalID != "" {
			t.Fatalf("externalId = %q", got.ExternalID)
		}
	})
	t.Run("delete", func(t *testing.T) {
		r := e.call(t, "DELETE", "/users/"+u.ID, "", http.StatusNoContent)
		if len(r.body) != 0 {
			t.Fatalf("204 with a body: %s", r.body)
		}
		problem(t, e.do(t, req{method: "GET", path: "/users/" + u.ID}), http.StatusNotFound, "")
		problem(t, e.do(t, req{method: "DELETE", path: "/users/" + u.ID}), http.StatusNotFound, "")
		// The email is free again.
		e.createUser(t, `{"name": "Other", "email": "ada@king.example"}`)
	})
}

func TestCreateUserWithToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	exp := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	var out struct {
		User  quota.User     `json:"user"`
		Token map[string]any `json:"token"`
	}
	e.call(t, "POST", "/users", `{"name": "T", "email": "t@example.com", "issueToken": true, "tokenName": "ci", "tokenExpiresAt": "`+exp+`"}`, http.StatusCreated).decode(t, &out)
	secret, _ := out.Token["token"].(string)
	if !strings.HasPrefix(secret, quota.TokenPrefix) || out.Token["name"] != "ci" || out.Token["id"] == "" ||
		!strings.HasPrefix(secret, out.Token["prefix"].(string)) || out.Token["expiresAt"] == nil || out.Token["createdAt"] == nil {
		t.Fatalf("token = %v", out.Token)
	}
	if _, ok := out.Token["hash"]; ok {
		t.Fatalf("token response carries the hash: %v", out.Token)
	}
	p, err := e.svc.Authenticate(context.Background(), secret)
	if err != nil || p.User.ID != out.User.ID {
		t.Fatalf("Authenticate(issued token) = %v, %v", p, err)
	}

	t.Run("invalid token fields create no user", func(t *testing.T) {
		past := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
		r := e.do(t, req{method: "POST", path: "/users", body: `{"name": "U", "email": "u@example.com", "issueToken": true, "tokenExpiresAt": "` + past + `"}`})
		problem(t, r, http.StatusBadRequest, "tokenExpiresAt")
		var list listUsersResponse
		e.call(t, "GET", "/users?email=u@example.com", "", http.StatusOK).decode(t, &list)
		if len(list.Items) != 0 {
			t.Fatalf("user created despite the bad token: %+v", list.Items[0])
		}
	})
	t.Run("token fields need issueToken", func(t *testing.T) {
		r := e.do(t, req{method: "POST", path: "/users", body: `{"name": "U", "email": "u@example.com", "tokenName": "x"}`})
		problem(t, r, http.StatusBadRequest, "tokenName")
	})
}

func TestPagination(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var want []string
	for i := range 7 {
		want = append(want, e.createUser(t, fmt.Sprintf(`{"name": "U%d", "email": "u%d@example.com"}`, i, i)).ID)
	}
	var got []string
	path := "/users?take=3"
	for page := 1; ; page++ {
		var list listUsersResponse
		r := e.call(t, "GET", path, "", http.StatusOK)
		r.decode(t, &list)
		for _, u := range list.Items {
			got = append(got, u.ID)
		}
		wantLen := 3
		if page == 3 {
			wantLen = 1
		}
		if len(list.Items) != wantLen {
			t.Fatalf("page %d has %d items, want %d", page, len(list.Items), wantLen)
		}
		if list.NextCursor == "" {
			if page != 3 {
				t.Fatalf("no nextCursor on page %d", page)
			}
			if strings.Contains(string(r.body), "nextCursor") {
				t.Fatalf("nextCursor present on the last page: %s", r.body)
			}
			break
		}
		if page == 3 {
			t.Fatalf("nextCursor %q on the last page", list.NextCursor)
		}
		path = "/users?take=3&cursor=" + list.NextCursor
	}
	if !slices.Equal(got, want) {
		t.Fatalf("pages hold %v, want %v", got, want)
	}

	t.Run("default take", func(t *testing.T) {
		var list listUsersResponse
		e.call(t, "GET", "/users", "", http.StatusOK).decode(t, &list)
		if len(list.Items) != 7 || list.NextCursor != "" {
			t.Fatalf("got %d items, cursor %q", len(list.Items), list.NextCursor)
		}
	})
	t.Run("empty store lists no items", func(t *testing.T) {
		r := newEnv(t).call(t, "GET", "/users", "", http.StatusOK)
		if strings.TrimSpace(string(r.body)) != `{"items":[]}` {
			t.Fatalf("body = %s", r.body)
		}
	})
}

func TestLookup(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.createUser(t, `{"name": "A", "email": "alice@example.com", "externalId": "ext-a"}`)
	e.createUser(t, `{"name": "B", "email": "bob@example.com", "externalId": "ext-b"}`)
	tests := []struct {
		name  string
		query string
		want  string // "" for no items
	}{
		{"email", "email=alice@example.com", a.ID},
		{"email in another case", "email=ALICE%40Example.Com", a.ID},
		{"unknown email", "email=carol@example.com", ""},
		{"malformed email", "email=nope", ""},
		{"external id", "externalId=ext-a", a.ID},
		{"external id is case-sensitive", "externalId=EXT-A", ""},
		{"email and matching external id", "email=alice@example.com&externalId=ext-a", a.ID},
		{"email and another user's external id", "email=alice@example.com&externalId=ext-b", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var list listUsersResponse
			e.call(t, "GET", "/users?"+tt.query, "", http.StatusOK).decode(t, &list)
			switch {
			case tt.want == "" && len(list.Items) != 0:
				t.Fatalf("got %d items, want none", len(list.Items))
			case tt.want != "" && (len(list.Items) != 1 || list.Items[0].ID != tt.want):
				t.Fatalf("got %+v, want user %s", list.Items, tt.want)
			case list.NextCursor != "":
				t.Fatalf("a lookup has a nextCursor")
			}
		})
	}
}

func TestConflicts(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.createUser(t, `{"name": "A", "email": "alice@example.com", "externalId": "ext-a"}`)
	b := e.createUser(t, `{"name": "B", "email": "bob@example.com"}`)
	tests := []struct {
		name, method, path, body, mention string
	}{
		{"email differing only in case", "POST", "/users", `{"name": "X", "email": "Alice@EXAMPLE.com"}`, "email"},
		{"external id", "POST", "/users", `{"name": "X", "email": "x@example.com", "externalId": "ext-a"}`, "external id"},
		{"patch to a taken email", "PATCH", "/users/" + b.ID, `{"email": "ALICE@example.com"}`, "email"},
		{"patch to a taken external id", "PATCH", "/users/" + b.ID, `{"externalId": "ext-a"}`, "external id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := problem(t, e.do(t, req{method: tt.method, path: tt.path, body: tt.body}), http.StatusConflict, "")
			if !strings.Contains(p.Detail, tt.mention) || !strings.Contains(p.Detail, "in use") {
				t.Fatalf("detail %q does not say %s is in use", p.Detail, tt.mention)
			}
		})
	}
	// Patching a user to its own values is no conflict.
	e.call(t, "PATCH", "/users/"+a.ID, `{"email": "ALICE@example.com", "externalId": "ext-a"}`, http.StatusOK)
}

func TestNotFound(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	u := e.createUser(t, `{"name": "A", "email": "a@example.com"}`)
	missing := quota.NewID()
	tests := []struct{ method, path, body string }{
		{"GET", "/users/" + missing, ""},
		{"GET", "/users/not%20an%20id", ""},
		{"PATCH", "/users/" + missing, `{"name": "X"}`},
		{"DELETE", "/users/" + missing, ""},
		{"POST", "/users/" + missing + "/tokens", `{}`},
		{"GET", "/users/" + missing + "/tokens", ""},
		{"DELETE", "/users/" + u.ID + "/tokens/" + missing, ""},
		{"DELETE", "/users/" + missing + "/tokens/" + missing, ""},
		{"GET", "/users/" + missing + "/limits", ""},
		{"PUT", "/users/" + missing + "/limits", `{}`},
		{"PATCH", "/users/" + missing + "/limits", `{}`},
		{"GET", "/users/" + missing + "/usage", ""},
		{"POST", "/users/" + missing + "/usage/reset", ""},
		{"GET", "/", ""},
		{"GET", "/nope", ""},
		{"GET", "/users/" + u.ID + "/nope", ""},
		{"GET", "/users/" + u.ID + "/", ""},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			p := problem(t, e.do(t, req{method: tt.method, path: tt.path, body: tt.body}), http.StatusNotFound, "")
			if p.Type != "about:blank" || p.Title != "Not Found" {
				t.Fatalf("problem = %+v", p)
			}
		})
	}

	t.Run("wrong method", func(t *testing.T) {
		for path, allow := range map[string]string{
			"/users":                          "POST",
			"/users/" + u.ID:                  "PATCH",
			"/users/" + u.ID + "/usage/reset": "POST",
		} {
			r := e.do(t, req{method: "PUT", path: path, body: `{}`})
			problem(t, r, http.StatusMethodNotAllowed, "")
			if got := r.header.Get("Allow"); !strings.Contains(got, allow) {
				t.Fatalf("PUT %s: Allow = %q, want it to list %s", path, got, allow)
			}
		}
	})
}

func TestBadRequests(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(o *Options) { o.MaxBodyBytes = 1024 })
	u := e.createUser(t, `{"name": "A", "email": "a@example.com"}`)
	users, limits, tokens := "/users", "/users/"+u.ID+"/limits", "/users/"+u.ID+"/tokens"
	tests := []struct {
		name         string
		method, path string
		body         string
		contentType  string
		status       int
		field        string // "" when the body as a whole is at fault
	}{
		{"bad email", "POST", users, `{"name": "X", "email": "not-an-email"}`, "", 400, "email"},
		{"email without a dot in the domain", "POST", users, `{"name": "X", "email": "x@localhost"}`, "", 400, "email"},
		{"email over 255 characters", "POST", users, `{"name": "X", "email": "` + strings.Repeat("a", 250) + `@example.com"}`, "", 400, "email"},
		{"missing name", "POST", users, `{"email": "x@example.com"}`, "", 400, "name"},
		{"bad status", "POST", users, `{"name": "X", "email": "x@example.com", "status": "paused"}`, "", 400, "status"},
		{"negative credits", "POST", users, `{"name": "X", "email": "x@example.com", "credits": -1}`, "", 400, "credits"},
		{"unknown limit shape", "POST", users, `{"name": "X", "email": "x@example.com", "limits": {"tokens": "lots"}}`, "", 400, "limits.tokens"},
		{"negative limit", "POST", users, `{"name": "X", "email": "x@example.com", "limits": {"tokens": -5}}`, "", 400, "limits.tokens"},
		{"unknown period", "POST", users, `{"name": "X", "email": "x@example.com", "limits": {"messages": {"limit": 5, "per": "week"}}}`, "", 400, "limits.messages"},
		{"bad resource name", "POST", users, `{"name": "X", "email": "x@example.com", "limits": {"Tokens!": 5}}`, "", 400, "limits.Tokens!"},
		{"limits not an object", "POST", users, `{"name": "X", "email": "x@example.com", "limits": 5}`, "", 400, "limits"},
		{"unknown field", "POST", users, `{"name": "X", "email": "x@example.com", "nickname": "x"}`, "", 400, "nickname"},
		{"wrong type", "POST", users, `{"name": 5, "email": "x@example.com"}`, "", 400, "name"},
		{"fractional credits", "POST", users, `{"name": "X", "email": "x@example.com", "credits": 1.5}`, "", 400, "credits"},
		{"bad token expiry", "POST", users, `{"name": "X", "email": "x@example.com", "issueToken": true, "tokenExpiresAt": "tomorrow"}`, "", 400, "tokenExpiresAt"},
		{"body over the cap", "POST", users, `{"name": "` + strings.Repeat("x", 2000) + `", "email": "x@example.com"}`, "", 413, ""},
		{"bad JSON", "POST", users, `{"name": "X", "email" "x@example.com"}`, "", 400, ""},
		{"truncated JSON", "POST", users, `{"name": "X"`, "", 400, ""},
		{"trailing garbage", "POST", users, `{"name": "X", "email": "x@example.com"} garbage`, "", 400, ""},
		{"two objects", "POST", users, `{"name": "X", "email": "x@example.com"}{}`, "", 400, ""},
		{"array body", "POST", users, `[{"name": "X"}]`, "", 400, ""},
		{"null body", "POST", users, `null`, "", 400, ""},
		{"empty body", "POST", users, ``, "", 400, ""},
		{"not JSON content type", "POST", users, `{"name": "X", "email": "x@example.com"}`, "text/plain", 415, ""},
		{"patch email invalid", "PATCH", "/users/" + u.ID, `{"email": "nope"}`, "", 400, "email"},
		{"patch null limits", "PATCH", "/users/" + u.ID, `{"limits": null}`, "", 400, "limits"},
		{"patch unknown field", "PATCH", "/users/" + u.ID, `{"credits": 5}`, "", 400, "credits"},
		{"put null limits", "PUT", limits, `null`, "", 400, ""},
		{"put negative limit", "PUT", limits, `{"tokens": -1}`, "", 400, "limits.tokens"},
		{"patch limit with unknown key", "PATCH", limits, `{"tokens": {"limit": 5, "every": "day"}}`, "", 400, "limits.tokens"},
		{"patch empty limit list", "PATCH", limits, `{"tokens": []}`, "", 400, "limits.tokens"},
		{"token expiry not RFC 3339", "POST", tokens, `{"expiresAt": "2030-01-02"}`, "", 400, "expiresAt"},
		{"token expiry in the past", "POST", tokens, `{"expiresAt": "2001-01-02T00:00:00Z"}`, "", 400, "expiresAt"},
		{"token name too long", "POST", tokens, `{"name": "` + strings.Repeat("n", 201) + `"}`, "", 400, "name"},
		{"reset empty list", "POST", "/users/" + u.ID + "/usage/reset", `{"resources": []}`, "", 400, "resources"},
		{"reset bad resource", "POST", "/users/" + u.ID + "/usage/reset", `{"resources": ["ok", "Bad Name"]}`, "", 400, "resources[1]"},
		{"take=0", "GET", "/users?take=0", "", "", 400, "take"},
		{"take=1001", "GET", "/users?take=1001", "", "", 400, "take"},
		{"take not a number", "GET", "/users?take=ten", "", "", 400, "take"},
		{"take twice", "GET", "/users?take=1&take=2", "", "", 400, "take"},
		{"cursor not base64", "GET", "/users?cursor=%25%25%25", "", "", 400, "cursor"},
		{"cursor of a bad id", "GET", "/users?cursor=Li4vLi4v", "", "", 400, "cursor"},
		{"cursor with a lookup", "GET", "/users?email=a@example.com&cursor=abc", "", "", 400, "cursor"},
		{"empty email lookup", "GET", "/users?email=", "", "", 400, "email"},
		{"unknown query parameter", "GET", "/users?limit=5", "", "", 400, "limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do(t, req{method: tt.method, path: tt.path, body: tt.body, contentType: tt.contentType})
			p := problem(t, r, tt.status, tt.field)
			if tt.field == "" && tt.status == 400 && len(p.Errors) != 0 {
				t.Fatalf("body-level problem names fields: %s", r.body)
			}
		})
	}

	t.Run("details are specific", func(t *testing.T) {
		for body, want := range map[string]string{
			`{"name": "X", "email" "x@example.com"}`:          "byte offset",
			`{"name": "X", "email": "x@example.com"} garbage`: "exactly one JSON value",
			`{"nickname": "x"}`:                               "accepted fields: name, email",
			`{"name": 5}`:                                     "must be a string, got number",
			`{"name": "` + strings.Repeat("x", 2000) + `"}`:   "body larger than 1024 bytes",
		} {
			p := problem(t, e.do(t, req{method: "POST", path: users, body: body}), map[bool]int{true: 413, false: 400}[len(body) > 1024], "")
			detail := p.Detail
			for _, f := range p.Errors {
				detail += " " + f.Detail
			}
			if !strings.Contains(detail, want) {
				t.Errorf("detail %q does not mention %q", detail, want)
			}
		}
	})
	t.Run("no content type is JSON", func(t *testing.T) {
		r := e.do(t, req{method: "POST", path: users, body: `{"name": "N", "email": "n@example.com"}`, contentType: "-"})
		if r.status != http.StatusCreated {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
	})
	t.Run("JSON with a charset", func(t *testing.T) {
		r := e.do(t, req{method: "POST", path: users, body: `{"name": "M", "email": "m@example.com"}`, contentType: "application/json; charset=utf-8"})
		if r.status != http.StatusCreated {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
	})
}

func TestTokens(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	u := e.createUser(t, `{"name": "A", "email": "a@example.com"}`)
	base := "/users/" + u.ID + "/tokens"
	exp := time.Now().Add(24 * time.Hour).UTC().Truncate(time.Second)

	var first, second map[string]any
	e.call(t, "POST", base, `{"name": "laptop", "expiresAt": "`+exp.Format(time.RFC3339)+`"}`, http.StatusCreated).decode(t, &first)
	e.call(t, "POST", base, "", http.StatusCreated).decode(t, &second)
	for _, tok := range []map[string]any{first, second} {
		secret, _ := tok["token"].(string)
		if !strings.HasPrefix(secret, quota.TokenPrefix) || tok["userId"] != u.ID || tok["id"] == "" || tok["createdAt"] == nil ||
			!strings.HasPrefix(secret, tok["prefix"].(string)) {
			t.Fatalf("created token = %v", tok)
		}
		if _, ok := tok["hash"]; ok {
			t.Fatalf("created token carries its hash: %v", tok)
		}
	}
	if first["name"] != "laptop" || first["expiresAt"] != exp.Format(time.RFC3339) {
		t.Fatalf("first token = %v", first)
	}
	if _, ok := second["expiresAt"]; ok {
		t.Fatalf("token without expiry has expiresAt: %v", second)
	}

	t.Run("list never shows secrets", func(t *testing.T) {
		r := e.call(t, "GET", base, "", http.StatusOK)
		for _, tok := range []map[string]any{first, second} {
			if strings.Contains(string(r.body), tok["token"].(string)) {
				t.Fatalf("list shows a secret: %s", r.body)
			}
		}
		var list struct {
			Items []map[string]any `json:"items"`
		}
		r.decode(t, &list)
		if len(list.Items) != 2 || list.Items[0]["id"] != first["id"] || list.Items[1]["id"] != second["id"] {
			t.Fatalf("list = %v", list.Items)
		}
		for _, it := range list.Items {
			if _, ok := it["token"]; ok {
				t.Fatalf("listed token has a secret: %v", it)
			}
			if _, ok := it["hash"]; ok {
				t.Fatalf("listed token has a hash: %v", it)
			}
		}
	})
	t.Run("revoke", func(t *testing.T) {
		path := base + "/" + first["id"].(string)
		e.call(t, "DELETE", path, "", http.StatusNoContent)
		problem(t, e.do(t, req{method: "DELETE", path: path}), http.StatusNotFound, "")
		if _, err := e.svc.Authenticate(context.Background(), first["token"].(string)); err == nil {
			t.Fatalf("revoked token still authenticates")
		}
		var list listTokensResponse
		e.call(t, "GET", base, "", http.StatusOK).decode(t, &list)
		if len(list.Items) != 1 || list.Items[0].ID != second["id"] {
			t.Fatalf("after revoking, list = %+v", list.Items)
		}
	})
	t.Run("another user's token is not found", func(t *testing.T) {
		other := e.createUser(t, `{"name": "B", "email": "b@example.com"}`)
		path := "/users/" + other.ID + "/tokens/" + second["id"].(string)
		problem(t, e.do(t, req{method: "DELETE", path: path}), http.StatusNotFound, "")
	})
}

func TestLimits(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	u := e.createUser(t, `{"name": "A", "email": "a@example.com", "limits": {"tokens": 1000}}`)
	path := "/users/" + u.ID + "/limits"
	steps := []struct {
		name, method, body, want string
	}{
		{"get", "GET", "", `{"tokens":1000}`},
		{"put replaces", "PUT", `{"messages": [{"limit": 60, "per": "minute"}, {"limit": 1000, "per": "day"}], "files": {"limit": 10}}`,
			`{"files":10,"messages":[{"limit":60,"per":"minute"},{"limit":1000,"per":"day"}]}`},
		{"patch merges", "PATCH", `{"tokens": 5000, "files": 20}`,
			`{"files":20,"messages":[{"limit":60,"per":"minute"},{"limit":1000,"per":"day"}],"tokens":5000}`},
		{"patch null removes", "PATCH", `{"messages": null}`, `{"files":20,"tokens":5000}`},
		{"patch nothing", "PATCH", `{}`, `{"files":20,"tokens":5000}`},
		{"get after", "GET", "", `{"files":20,"tokens":5000}`},
		{"put empty clears", "PUT", `{}`, `{}`},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			r := e.call(t, s.method, path, s.body, http.StatusOK)
			if got := strings.TrimSpace(string(r.body)); got != s.want {
				t.Fatalf("body %s, want %s", got, s.want)
			}
		})
	}
}

func TestUsage(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	u := e.createUser(t, `{"name": "A", "email": "a@example.com", "limits": {"messages": 10, "tokens": {"limit": 1000, "per": "day"}}}`)
	path := "/users/" + u.ID + "/usage"
	ctx := context.Background()
	full, err := e.svc.GetUser(ctx, u.ID)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := e.svc.AdmitUses(ctx, full, []quota.Use{{Resource: "messages", Amount: 1}, {Resource: "tokens", Amount: 250}}); err != nil {
			t.Fatalf("Admit: %v", err)
		}
	}

	used := func(t *testing.T, r resp) map[string]int64 {
		t.Helper()
		var usage quota.Usage
		r.decode(t, &usage)
		if usage.UserID != u.ID {
			t.Fatalf("usage of %q", usage.UserID)
		}
		out := map[string]int64{}
		for _, it := range usage.Items {
			out[it.Resource+"/"+it.Per] = it.Used
			if it.Limit != nil && (it.Remaining == nil || *it.Remaining != *it.Limit-it.Used) {
				t.Fatalf("item %+v: remaining does not add up", it)
			}
		}
		return out
	}
	steps := []struct {
		name, method, path, body string
		want                     map[string]int64
	}{
		{"after admissions", "GET", path, "", map[string]int64{"messages/lifetime": 3, "tokens/day": 750, "tokens/lifetime": 750}},
		{"reset one resource", "POST", path + "/reset", `{"resources": ["messages"]}`, map[string]int64{"messages/lifetime": 0, "tokens/day": 750, "tokens/lifetime": 750}},
		{"reset all with no body", "POST", path + "/reset", "", map[string]int64{"messages/lifetime": 0, "tokens/day": 0}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			got := used(t, e.call(t, s.method, s.path, s.body, http.StatusOK))
			for k, v := range s.want {
				if got[k] != v {
					t.Fatalf("%s used %d, want %d (all: %v)", k, got[k], v, got)
				}
			}
		})
	}
	t.Run("reset with an empty object resets all", func(t *testing.T) {
		if _, err := e.svc.AdmitUses(ctx, full, []quota.Use{{Resource: "messages", Amount: 2}}); err != nil {
			t.Fatal(err)
		}
		got := used(t, e.call(t, "POST", path+"/reset", `{}`, http.StatusOK))
		if got["messages/lifetime"] != 0 {
			t.Fatalf("usage after reset: %v", got)
		}
	})
}

// TestOverHTTP runs a short walk through a real server and client, where
// body limits and headers behave as they do in production.
func TestOverHTTP(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(o *Options) { o.MaxBodyBytes = 256 })
	srv := httptest.NewServer(e.h)
	defer srv.Close()
	send := func(method, path, body string) (*http.Response, []byte) {
		t.Helper()
		r, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		r.Header.Set("Authorization", "Bearer "+testKey2)
		r.Header.Set("Content-Type", "application/json")
		res, err := srv.Client().Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatal(err)
		}
		return res, b
	}
	res, body := send("POST", "/users", `{"name": "A", "email": "a@example.com", "issueToken": true}`)
	if res.StatusCode != http.StatusCreated || res.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("create: %d %v %s", res.StatusCode, res.Header, body)
	}
	var created createUserResponse
	if err := json.Unmarshal(body, &created); err != nil || created.Token == nil {
		t.Fatalf("create: %v %s", err, body)
	}
	res, body = send("POST", "/users", `{"name": "`+strings.Repeat("x", 300)+`", "email": "b@example.com"}`)
	if res.StatusCode != http.StatusRequestEntityTooLarge || res.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("oversized: %d %s", res.StatusCode, body)
	}
	res, body = send("DELETE", "/users/"+created.User.ID, "")
	if res.StatusCode != http.StatusNoContent {
		t.Fatalf("delete: %d %s", res.StatusCode, body)
	}
	res, _ = send("GET", "/users/"+created.User.ID, "")
	if res.StatusCode != http.StatusNotFound {
		t.Fatalf("get after delete: %d", res.StatusCode)
	}
}
