// Package boltstore is the embedded, single-node quota.Store: users, tokens
// and usage counters in one bbolt database file, the default when no Redis is
// configured.
//
// # Layout
//
// Every record lives in a bucket of its own, and every change to users or
// tokens runs in one bbolt transaction (fsynced on commit), so uniqueness of
// emails and external ids is checked and enforced atomically:
//
//	users       user id -> user JSON
//	emails      normalized email -> user id
//	externals   external id -> user id
//	tokens      SHA-256 hex of the secret -> token JSON
//	usertokens  user id + "/" + token id -> token hash (token ids are
//	            UUIDv7, so a prefix scan lists them in creation order)
//	counters    user id -> JSON of the user's counters by quota.CounterKey
//	meta        schema version
//
// # Durability of counters
//
// Admission must not wait for a disk sync, so usage counters are kept in
// memory: a user's counters are loaded from the counters bucket on first use,
// every Admit is evaluated with quota.ApplyCharges under a lock that covers
// that user, and changed users are written back in one transaction every
// Options.FlushInterval by a background goroutine. The contract is:
//
//   - a clean Close (or Flush) writes every admitted charge to disk, so a
//     restart loses nothing;
//   - a crash or power loss loses at most the charges admitted since the last
//     successful flush, about one FlushInterval; counters then read lower than
//     they were, never higher;
//   - ResetUsage and DeleteUser are written through before they return, so a
//     crash never brings back counters that were reset or deleted, and a
//     flush never writes back the counters of a deleted user;
//   - counters of an id that is not a stored user are kept in memory only.
//
// Counters of every user used since Open stay in memory (a few hundred bytes
// per user) until Close.
//
// Only one process may open the database file at a time: bbolt holds an
// exclusive file lock, and Open gives up after a short timeout with an error
// that says the file is locked by another process. The package is therefore
// for a single Caddy node; several nodes share counters through the Redis
// store instead.
//
// The package imports quota and bbolt only; it must not import Caddy.
package boltstore
