package caddymodule

import (
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

func init() {
	caddy.RegisterModule(MatchQuotaPath{})
}

// MatchQuotaPath matches the request path the way a lenient backend
// routes it (quota.CleanPath, case-insensitively: through ;params,
// dot segments, doubled and trailing slashes, trailing white space)
// against a regular expression, and sets its captures as placeholders
// like path_regexp ({re.<name>.1}). A route guarded with `require … on`
// next to a catch-all should select its requests with it, so that
// /Users, /users/, users;a or "users " cannot reach the backend by the
// catch-all instead.
//
//	@listUsers quota_path cbu ^/v1/workspaces/[^/]+/chatbots/([^/]+)/users$
type MatchQuotaPath struct{ caddyhttp.MatchRegexp }

// CaddyModule returns the Caddy module information.
func (MatchQuotaPath) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.matchers.quota_path",
		New: func() caddy.Module { return new(MatchQuotaPath) },
	}
}

// Provision compiles the regular expression, matched without regard to
// case.
func (m *MatchQuotaPath) Provision(ctx caddy.Context) error {
	if !strings.HasPrefix(m.Pattern, "(?i)") {
		m.Pattern = "(?i)" + m.Pattern
	}
	return m.MatchRegexp.Provision(ctx)
}

// Validate checks the capture name.
func (m *MatchQuotaPath) Validate() error { return m.MatchRegexp.Validate() }

// Match reports whether r's normalized path matches.
func (m MatchQuotaPath) Match(r *http.Request) bool {
	ok, _ := m.MatchWithError(r)
	return ok
}

// MatchWithError reports whether r's normalized path matches, setting
// the captures.
func (m MatchQuotaPath) MatchWithError(r *http.Request) (bool, error) {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		repl = caddy.NewReplacer()
	}
	// Case-insensitive matching on the cleaned path: the captures keep the
	// case the backend sees (chatbot AbC is not abc).
	return m.MatchRegexp.Match(quota.CleanPath(r.URL.Path), repl), nil
}

// UnmarshalCaddyfile reads `quota_path [<name>] <regexp>`.
func (m *MatchQuotaPath) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return m.MatchRegexp.UnmarshalCaddyfile(d)
}

// Interface guards.
var (
	_ caddyhttp.RequestMatcherWithError = (*MatchQuotaPath)(nil)
	_ caddy.Provisioner                 = (*MatchQuotaPath)(nil)
	_ caddy.Validator                   = (*MatchQuotaPath)(nil)
	_ caddyfile.Unmarshaler             = (*MatchQuotaPath)(nil)
)
