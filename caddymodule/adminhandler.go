package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/tenantquota/caddy-tenant-quota/admin"
	"github.com/tenantquota/caddy-tenant-quota/quota"
)

func init() {
	caddy.RegisterModule(AdminHandler{})
}

// AdminHandler serves the admin REST API (users, tokens, limits, usage)
// wherever the operator mounts it, normally
// `handle_path /quota/* { tenant_quota_admin }`. It answers every request
// itself and never calls the next handler.
type AdminHandler struct {
	// MaxBodyBytes caps request bodies (default 64 KiB).
	MaxBodyBytes int64 `json:"max_body_bytes,omitempty"`
	// AllowPlainHTTP lets clients other than loopback ones use the admin
	// API without TLS. Off by default: the admin key and token secrets
	// would cross the network in clear text.
	AllowPlainHTTP bool `json:"allow_plain_http,omitempty"`

	api http.Handler
}

// CaddyModule returns the Caddy module information.
func (AdminHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.tenant_quota_admin",
		New: func() caddy.Module { return new(AdminHandler) },
	}
}

// Provision builds the admin API over the tenant_quota app's service.
func (h *AdminHandler) Provision(ctx caddy.Context) error {
	if err := checkAdminReachableEarly(ctx); err != nil {
		return err
	}
	appVal, err := ctx.App("tenant_quota")
	if err != nil {
		return fmt.Errorf("loading the tenant_quota app: %w", err)
	}
	app := appVal.(*App)
	if len(app.adminKeys) == 0 {
		return errors.New("tenant_quota_admin needs at least one admin_key in the tenant_quota global option")
	}
	api, err := admin.New(admin.Options{
		ServiceFunc: app.Service, NamedKeys: app.adminKeys, Logger: ctx.Logger(), MaxBodyBytes: h.MaxBodyBytes,
		EventSource: app.eventSource(), Roles: quota.Roles(app.Roles), ModelGroups: app.ModelGroups.Names(),
	})
	if err != nil {
		return err
	}
	h.api = api
	return nil
}

// Validate checks the configuration.
func (h *AdminHandler) Validate() error {
	if h.MaxBodyBytes < 0 {
		return errors.New("max_body_bytes must not be negative")
	}
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *AdminHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.TLS == nil && !h.AllowPlainHTTP && !loopbackPeer(r.RemoteAddr) {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(http.StatusForbidden)
		return json.NewEncoder(w).Encode(map[string]any{
			"type": "about:blank", "title": "Forbidden", "status": http.StatusForbidden,
			"detail": "the admin API refuses plain HTTP from non-loopback clients: serve it over HTTPS, or set allow_plain_http in tenant_quota_admin",
		})
	}
	h.api.ServeHTTP(w, r)
	return nil
}

// loopbackPeer reports whether the connection's peer is on this machine.
func loopbackPeer(remoteAddr string) bool {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*AdminHandler)(nil)
	_ caddy.Validator             = (*AdminHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*AdminHandler)(nil)
)
