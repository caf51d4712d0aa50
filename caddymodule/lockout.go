package caddymodule

import (
	"fmt"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// checkAdminReachable refuses a config in which a tenant_quota without a
// matcher runs before tenant_quota_admin on the same requests (say,
// tenant_quota at site level and the admin API in a handle_path): every
// admin call would be refused as an unknown tenant token, locking the
// operator out. It runs at Start, once the http app is provisioned.
func (a *App) checkAdminReachable() error {
	if a.ctx == nil {
		return nil
	}
	v, err := a.ctx.AppIfConfigured("http")
	if err != nil || v == nil {
		return nil
	}
	httpApp, ok := v.(*caddyhttp.App)
	if !ok {
		return nil
	}
	for name, srv := range httpApp.Servers {
		if wrapped(srv.Routes, false) {
			return fmt.Errorf("server %s: a tenant_quota without a matcher runs before tenant_quota_admin, so every admin call would be refused as a tenant request; put tenant_quota inside a handle block for tenant traffic (as in Caddyfile.example), or give it a matcher that leaves the admin path out", name)
		}
	}
	return nil
}

// wrapped reports whether a tenant_quota handler of a route without
// matchers (or an enclosing one, under) comes before a tenant_quota_admin.
func wrapped(routes caddyhttp.RouteList, under bool) bool {
	for _, r := range routes {
		for _, h := range r.Handlers {
			switch h := h.(type) {
			case *Handler:
				if len(r.MatcherSets) == 0 {
					under = true
				}
			case *AdminHandler:
				if under {
					return true
				}
			case *caddyhttp.Subroute:
				if wrapped(h.Routes, under) {
					return true
				}
			}
		}
	}
	return false
}
