package caddymodule

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/tenantquota/caddy-tenant-quota/admin"
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
	appVal, err := ctx.App("tenant_quota")
	if err != nil {
		return fmt.Errorf("loading the tenant_quota app: %w", err)
	}
	app := appVal.(*App)
	if len(app.adminKeys) == 0 {
		return errors.New("tenant_quota_admin needs at least one admin_key in the tenant_quota global option")
	}
	api, err := admin.New(admin.Options{
		Service: app.Service(), Keys: app.adminKeys, Logger: ctx.Logger(), MaxBodyBytes: h.MaxBodyBytes,
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
	h.api.ServeHTTP(w, r)
	return nil
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*AdminHandler)(nil)
	_ caddy.Validator             = (*AdminHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*AdminHandler)(nil)
)
