// Package redisstore is the quota.Store on Redis, for several Caddy nodes
// that share users, tokens and usage counters. It works with any go-redis v9
// UniversalClient: a single server, Sentinel, or Redis Cluster (Redis 5 or
// newer, for scripts that read TIME before they write).
//
// # Keys
//
// With the default prefix "tq", every key of one user carries the user id as
// a hash tag, so the keys a script or transaction touches together live in
// one Cluster slot:
//
//	tq:{<userID>}:user     user JSON
//	tq:{<userID>}:usage    hash of all counters: "<resource>|<period>" -> used,
//	                       "<resource>|<period>|s" -> window start (unix s)
//	tq:{<userID>}:tokens   hash: token id -> token JSON
//
// Global indexes sit in other slots and are never touched by the same script
// as a user's keys:
//
//	tq:email:<email>       -> user id
//	tq:ext:<externalId>    -> user id
//	tq:tok:<sha256 hex>    -> token JSON
//	tq:users               sorted set of user ids (score 0, in id order)
//
// # Atomicity
//
// Admission is one Lua script over the user's usage hash: it reads the clock
// with TIME, checks every charge and applies all or none, with the semantics
// of quota.ApplyCharges. Changes that span slots (a user and its indexes, a
// token and its global hash key) cannot be one transaction on Cluster, so
// they are ordered to fail safe: an index key is first claimed with SET NX
// and a short expiry, made permanent only once the user record holds the
// value, and released with a compare-and-delete; a revoked token's global key
// goes before its entry in the user's hash. A claim left behind by a crashed
// node expires on its own, and a permanent index key whose user no longer
// holds the value is taken over by the next user that asks for it.
//
// Every call has a deadline: the caller's, or Options.Timeout when the
// context has none. Clients should be built with ContextTimeoutEnabled.
//
// The package imports quota and go-redis only; it must not import Caddy, and
// it must not hold state of its own beyond the client: every node sees the
// same data through Redis.
package redisstore
