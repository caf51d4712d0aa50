// Package caddymodule is the Caddy glue of caddy-tenant-quota: the
// tenant_quota app (global option) that owns the store and the quota
// service, the tenant_quota handler that enforces quotas in front of a
// backend, the tenant_quota_admin handler that serves the admin API, and
// their Caddyfile syntax.
//
// Logic that can be tested without Caddy belongs in package quota or admin,
// not here.
package caddymodule
