// Package caddytenantquota is the import path xcaddy builds with
// (`xcaddy build --with github.com/tenantquota/caddy-tenant-quota`): importing
// it registers the tenant_quota app, the tenant_quota and tenant_quota_admin
// HTTP handlers and their Caddyfile syntax. The code lives in caddymodule.
package caddytenantquota

import (
	// Registers the Caddy modules.
	_ "github.com/tenantquota/caddy-tenant-quota/caddymodule"
)
