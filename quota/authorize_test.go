package quota_test

import (
	"regexp"
	"strings"
	"testing"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// TestAuthorize: require's rule, as a table: a token's scope and a role
// granting the permission are both needed; without on, a role on any
// resource; with on, on the resolved resource (a resource that does not
// resolve to a valid name is refused).
func TestAuthorize(t *testing.T) {
	t.Parallel()
	roles := quota.Roles{"Chatter": {"chat"}, "Editor": {"chatbots.*"}}
	user := func(grants ...quota.RoleGrant) *quota.User { return &quota.User{Roles: grants} }
	on := func(role, resource string) quota.RoleGrant { return quota.RoleGrant{Role: role, Resource: resource} }
	// As Caddy's replacer: a known placeholder, and "" for any other.
	resolve := func(s string) string {
		return regexp.MustCompile(`\{[^}]*\}`).ReplaceAllString(strings.ReplaceAll(s, "{id}", "42"), "")
	}
	cases := []struct {
		name   string
		user   *quota.User
		scopes []string
		reqs   []quota.Requirement
		want   string // "" or a part of the refusal
	}{
		{"no requirement", user(), nil, nil, ""},
		{"a role on any resource", user(on("Chatter", "*")), nil, []quota.Requirement{{Permission: "chat"}}, ""},
		{"a role on one resource, require without on", user(on("Chatter", "chatbots/7")), nil, []quota.Requirement{{Permission: "chat"}}, ""},
		{"no role, an unscoped token", user(), nil, []quota.Requirement{{Permission: "chat"}}, "You do not have the permission chat."},
		{"a role, a token scoped elsewhere", user(on("Chatter", "*")), []string{"usage.read"}, []quota.Requirement{{Permission: "chat"}}, "scopes do not allow chat"},
		{"a role on the resolved resource", user(on("Editor", "chatbots/42")), nil, []quota.Requirement{{Permission: "chatbots.update", On: "chatbots/{id}"}}, ""},
		{"a role on a type", user(on("Editor", "chatbots/*")), nil, []quota.Requirement{{Permission: "chatbots.update", On: "chatbots/{id}"}}, ""},
		{"a role on another resource", user(on("Editor", "chatbots/7")), nil, []quota.Requirement{{Permission: "chatbots.update", On: "chatbots/{id}"}}, "on chatbots/42"},
		{"a resource that does not resolve", user(on("Editor", "*")), nil, []quota.Requirement{{Permission: "chatbots.update", On: "chatbots/{x}"}}, "You do not have"},
		{"every requirement", user(on("Chatter", "*")), nil, []quota.Requirement{{Permission: "chat"}, {Permission: "chatbots.update", On: "chatbots/{id}"}}, "chatbots.update"},
		{"a long resource is clipped", user(), nil, []quota.Requirement{{Permission: "chat", On: "chatbots/" + strings.Repeat("x", 300)}}, "…"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := &quota.Principal{User: c.user, Token: &quota.Token{Scopes: c.scopes}}
			got := roles.Authorize(p, c.reqs, resolve)
			if c.want == "" && got != "" || c.want != "" && !strings.Contains(got, c.want) {
				t.Fatalf("Authorize = %q, want %q", got, c.want)
			}
			if len(got) > 200 {
				t.Fatalf("a refusal of %d bytes", len(got))
			}
		})
	}
}
