package caddymodule

import (
	"context"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// TestMatchQuotaPath: the spellings that slipped past path_regexp to a
// catch-all route (case, trailing slash, ;params, trailing space) are
// matched, and the capture is the id the backend routes.
func TestMatchQuotaPath(t *testing.T) {
	m := MatchQuotaPath{caddyhttp.MatchRegexp{Name: "cbu", Pattern: `^/v1/workspaces/[^/]+/chatbots/([^/]+)/users$`}}
	if err := m.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		path, id string // id "" for no match
	}{
		{"/v1/workspaces/w/chatbots/abc/users", "abc"},
		{"/v1/workspaces/w/chatbots/abc/users/", "abc"},
		{"/v1/workspaces/w/chatbots/abc/Users", "abc"},
		{"/V1/Workspaces/w/Chatbots/abc/USERS", "abc"},
		{"/v1/workspaces/w/chatbots/AbC/users", "AbC"}, // ids keep their case
		{"/v1/workspaces/w/chatbots/abc/users;a", "abc"},
		{"/v1/workspaces/w/chatbots/abc/users%20", "abc"},
		{"/v1/workspaces/w/chatbots/abc;x/users", "abc"},
		{"/v1/workspaces/w/chatbots/abc/other", ""},
	} {
		r := httptest.NewRequest("GET", tt.path, nil)
		repl := caddy.NewReplacer()
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
		ok, err := m.MatchWithError(r)
		if err != nil || ok != (tt.id != "") {
			t.Errorf("%s: matched %v (%v)", tt.path, ok, err)
			continue
		}
		if got, _ := repl.GetString("http.regexp.cbu.1"); ok && got != tt.id {
			t.Errorf("%s: captured %q, want %q", tt.path, got, tt.id)
		}
	}
}
