package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

func init() {
	caddy.RegisterModule(UsageHandler{})
	httpcaddyfile.RegisterHandlerDirective("tenant_quota_usage", parseUsageHandler)
	httpcaddyfile.RegisterDirectiveOrder("tenant_quota_usage", httpcaddyfile.Before, "respond")
}

// UsageHandler lets a tenant read its own usage with its own token: its
// limits, usage, remaining, resets and credits, and the calling token's own
// limits. It answers every request itself and charges nothing. A scoped
// token needs the usage.read scope.
type UsageHandler struct {
	app *App
}

// CaddyModule returns the Caddy module information.
func (UsageHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.tenant_quota_usage",
		New: func() caddy.Module { return new(UsageHandler) },
	}
}

// Provision loads the tenant_quota app.
func (h *UsageHandler) Provision(ctx caddy.Context) error {
	app, err := ctx.App("tenant_quota")
	if err != nil {
		return fmt.Errorf("loading the tenant_quota app: %w", err)
	}
	h.app = app.(*App)
	return nil
}

// selfUsage is the body of a tenant's usage.
type selfUsage struct {
	*quota.Usage
	Token tokenUsage `json:"token"`
}

type tokenUsage struct {
	ID     string            `json:"id"`
	Scopes []string          `json:"scopes,omitempty"`
	Items  []quota.UsageItem `json:"items"`
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *UsageHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return writeError(w, http.StatusMethodNotAllowed, "use GET", "invalid_request_error", "method_not_allowed")
	}
	secret, ok := tokenFrom(r, defaultTokenHeaders)
	if !ok {
		return writeUnauthorized(w, missingToken(DefaultTokenHeaders))
	}
	svc := h.app.Service()
	p, err := svc.Authenticate(r.Context(), secret)
	if err != nil {
		return answerFailure(w, r, h.app.logger, nil, err)
	}
	if !p.Token.Allows(quota.PermUsageRead) {
		return writeError(w, http.StatusForbidden, "This token's scopes do not allow usage.read.", "permission_error", "permission_denied")
	}
	u, err := svc.Usage(r.Context(), p.User.ID)
	if err != nil {
		return answerFailure(w, r, h.app.logger, nil, err)
	}
	out := selfUsage{Usage: u, Token: tokenUsage{ID: p.Token.ID, Scopes: p.Token.Scopes, Items: []quota.UsageItem{}}}
	if len(p.Token.Limits) > 0 {
		tu, err := svc.TokenUsage(r.Context(), p.User.ID, p.Token.ID)
		if err == nil {
			out.Token.Items = tu.Items
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	return json.NewEncoder(w).Encode(out)
}

func parseUsageHandler(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(UsageHandler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile reads the tenant_quota_usage directive, which takes
// no options:
//
//	tenant_quota_usage [<matcher>]
func (h *UsageHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("tenant_quota_usage takes no options")
	}
	return nil
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*UsageHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*UsageHandler)(nil)
	_ caddyfile.Unmarshaler       = (*UsageHandler)(nil)
)
