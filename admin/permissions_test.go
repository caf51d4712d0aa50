package admin

import (
	"net/http"
	"strings"
	"testing"

	"github.com/tenantquota/caddy-tenant-quota/internal/redistest"
	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/redisstore"
)

// TestAdminPermissions: every route × a key with only its permission
// (let through) and a key with every permission but its own (403 naming
// the permission, nothing changed); wildcards grant their prefix. On both
// stores.
func TestAdminPermissions(t *testing.T) {
	t.Parallel()
	t.Run("embedded", func(t *testing.T) { testAdminPermissions(t, nil) })
	t.Run("redis", func(t *testing.T) {
		srv := redistest.Start(t)
		store, err := redisstore.New(redisstore.Options{Client: srv.Client(t), Timeout: redistest.Timeout})
		if err != nil {
			t.Fatal(err)
		}
		testAdminPermissions(t, store)
	})
}

func testAdminPermissions(t *testing.T, store quota.Store) {
	var keys []Key
	secret := func(kind, perm string) string { return kind + "-" + strings.ReplaceAll(perm, ".", "-") + "-0123456789" }
	bearer := func(kind, perm string) string { return "Bearer " + secret(kind, perm) }
	for _, perm := range quota.AdminPermissions {
		var others []string
		for _, p := range quota.AdminPermissions {
			if p != perm {
				others = append(others, p)
			}
		}
		keys = append(keys, Key{Name: "only-" + perm, Secret: secret("only", perm), Permissions: []string{perm}},
			Key{Name: "not-" + perm, Secret: secret("not", perm), Permissions: others})
	}
	keys = append(keys, Key{Name: "users-any", Secret: "users-any-0123456789", Permissions: []string{"users.*"}})
	configure := func(o *Options) { o.NamedKeys = keys }
	e := newEnv(t, configure)
	if store != nil {
		e = newEnvOn(t, store, configure)
	}
	u := e.createUser(t, `{"name": "P", "email": "p@example.com", "issueToken": true}`)
	path := func(pattern string) (method, p string) {
		method, p, _ = strings.Cut(pattern, " ")
		p = strings.ReplaceAll(p, "{id}", u.ID)
		return method, strings.ReplaceAll(p, "{tokenId}", "no-such-token")
	}
	for _, r := range Routes {
		method, p := path(r.Pattern)
		body := ""
		if method == "POST" || method == "PATCH" || method == "PUT" {
			body = `{}`
		}
		denied := e.do(t, req{method: method, path: p, body: body, key: bearer("not", r.Permission)})
		pr := problem(t, denied, http.StatusForbidden, "")
		if r.Pattern == "DELETE /users/{id}" {
			e.call(t, "GET", "/users/"+u.ID, "", http.StatusOK) // the denied delete changed nothing
		}
		if !strings.Contains(pr.Detail, r.Permission) {
			t.Fatalf("%s without %s: %s", r.Pattern, r.Permission, pr.Detail)
		}
		if got := e.do(t, req{method: method, path: p, body: body, key: bearer("only", r.Permission)}); got.status == http.StatusForbidden || got.status == http.StatusUnauthorized {
			t.Fatalf("%s with %s: %d %s", r.Pattern, r.Permission, got.status, got.body)
		}
	}
	v := e.createUser(t, `{"name": "Q", "email": "q@example.com"}`)
	if got := e.do(t, req{method: "GET", path: "/users/" + v.ID, key: "Bearer users-any-0123456789"}); got.status != http.StatusOK {
		t.Fatalf("users.* reading a user: %d", got.status)
	}
	problem(t, e.do(t, req{method: "GET", path: "/events", key: "Bearer users-any-0123456789"}), http.StatusForbidden, "")
}
