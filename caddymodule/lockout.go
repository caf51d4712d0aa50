package caddymodule

import (
	"encoding/json"
	"fmt"

	"github.com/caddyserver/caddy/v2"
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
	return adminUnreachable(httpApp)
}

// adminUnreachable is checkAdminReachable's error for an http app, or
// nil.
func adminUnreachable(httpApp *caddyhttp.App) error {
	for name, srv := range httpApp.Servers {
		if wrapped(srv.Routes, false) {
			return fmt.Errorf("server %s: a tenant_quota without a matcher runs before tenant_quota_admin, so every admin call would be refused as a tenant request; put tenant_quota inside a handle block for tenant traffic (as in Caddyfile.example), or give it a matcher that leaves the admin path out", name)
		}
	}
	return nil
}

// checkAdminReachableEarly is checkAdminReachable while the http app is
// being provisioned (from tenant_quota_admin's Provision), so that caddy
// validate, which provisions and never starts, refuses the same configs
// as caddy run. The http app is among the modules provisioning this one;
// its routes are then partly provisioned (typed handlers) and partly
// still JSON, and wrapped reads both.
func checkAdminReachableEarly(ctx caddy.Context) error {
	for _, m := range ctx.Modules() {
		if httpApp, ok := m.(*caddyhttp.App); ok {
			return adminUnreachable(httpApp)
		}
	}
	return nil
}

// wrapped reports whether a tenant_quota handler of a route without
// matchers (or an enclosing one, under) comes before a tenant_quota_admin.
// Routes not provisioned yet are read from their JSON.
func wrapped(routes caddyhttp.RouteList, under bool) bool {
	for _, r := range routes {
		bare := len(r.MatcherSets) == 0 && len(r.MatcherSetsRaw) == 0
		if len(r.Handlers) == 0 {
			if rawWrapped(r.HandlersRaw, bare, &under) {
				return true
			}
			continue
		}
		for _, h := range r.Handlers {
			switch h := h.(type) {
			case *Handler:
				if bare {
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

// rawHandler is what wrapped reads of a handler not provisioned yet.
type rawHandler struct {
	Handler string `json:"handler"`
	Routes  []struct {
		Match  []json.RawMessage `json:"match"`
		Handle []json.RawMessage `json:"handle"`
	} `json:"routes"`
}

// rawWrapped is wrapped over the JSON of one route's handlers.
func rawWrapped(handlers []json.RawMessage, bare bool, under *bool) bool {
	for _, raw := range handlers {
		var h rawHandler
		if json.Unmarshal(raw, &h) != nil {
			continue
		}
		switch h.Handler {
		case "tenant_quota":
			if bare {
				*under = true
			}
		case "tenant_quota_admin":
			if *under {
				return true
			}
		case "subroute":
			inner := *under
			for _, r := range h.Routes {
				if rawWrapped(r.Handle, len(r.Match) == 0, &inner) {
					return true
				}
			}
		}
	}
	return false
}
