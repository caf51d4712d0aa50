// Package quota is the domain of caddy-tenant-quota: users (sub-accounts),
// their API tokens, their limits and calendar windows, the atomic admission
// of usage charges, the Store interface that persists all of it, and the
// Service that puts a hot in-process cache in front of a Store.
//
// The package must not import Caddy: it is tested on its own, and the Caddy
// layer (package caddymodule) stays thin glue around it. Stores live in
// sub-packages (redisstore, boltstore) and all pass the conformance suite in
// package storetest.
package quota
