// Package admin is the admin REST API of caddy-tenant-quota: user, token,
// limit and usage management over a *quota.Service, served by a plain
// http.Handler.
//
// The handler expects paths relative to its mount point (/users, /users/{id},
// /users/{id}/tokens, /users/{id}/limits, /users/{id}/usage, ...): the Caddy
// layer mounts it behind a stripped prefix such as /quota. Every request must
// carry one of the configured admin keys as a bearer token. Request bodies
// are decoded strictly (one JSON object, UTF-8, no key twice in one object,
// no unknown fields, a size cap) and
// every error is an RFC 9457 problem (application/problem+json); quota errors
// are mapped to HTTP status codes in one function, writeError.
//
// The package imports quota, the standard library, zap and
// internal/strictjson (the duplicate-key scanner the LLM request parser
// uses too) only. It must not
// import Caddy (package caddymodule wraps it as a Caddy handler) and it holds
// no domain logic of its own: validation, uniqueness and counters belong to
// package quota. It never logs an admin key or a token secret.
package admin
