package quota

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/ristretto/v2"
)

// hotCache keeps tokens (by secret hash) and users (by id) in process, so a
// request whose token and user are cached needs no store round trip.
//
// Invalidation is exact on this node: every entry remembers the generation
// at which its load began, and invalidate records the generation of each
// invalidated key, so a load that raced with an invalidation is never
// served. Other nodes rely on the TTL (and, later, pub/sub).
type hotCache struct {
	c   *ristretto.Cache[string, cacheEntry]
	ttl atomic.Int64 // time.Duration; settable while in use
	gen atomic.Uint64
	// flushed is the generation of the last flush: older entries are stale.
	flushed atomic.Uint64
	// invalidatedAt is the generation of the last invalidation: an entry
	// loaded since needs no look at invalidated (no lock on the hot path).
	invalidatedAt atomic.Uint64

	mu          sync.Mutex
	invalidated map[string]invalidation

	hits, misses atomic.Int64
}

type cacheEntry struct {
	gen   uint64
	token *Token
	user  *User
	// userKey is the cache key of a token's user, made once; principal
	// the token's principal as last made (see Authenticate).
	userKey   string
	principal *atomic.Pointer[cachedPrincipal]
}

// cachedPrincipal is a principal, the cache generation at which making it
// began and when it must be made again (the cache TTL).
type cachedPrincipal struct {
	p *Principal
	// hash is the token's hash (its store key).
	hash    string
	gen     uint64
	expires time.Time
	// touched is when the token's use was last noted (unix ns): it is
	// noted at most once a minute (recordUse), here without a lock.
	touched atomic.Int64
}

// fresh reports whether nothing was invalidated or flushed since
// generation gen began.
func (h *hotCache) fresh(gen uint64) bool {
	return gen >= h.invalidatedAt.Load() && gen >= h.flushed.Load()
}

type invalidation struct {
	gen uint64
	at  time.Time
}

func newHotCache(maxEntries int64, ttl time.Duration) (*hotCache, error) {
	c, err := ristretto.NewCache(&ristretto.Config[string, cacheEntry]{
		NumCounters: maxEntries * 10,
		MaxCost:     maxEntries,
		BufferItems: 64,
	})
	if err != nil {
		return nil, err
	}
	h := &hotCache{c: c, invalidated: map[string]invalidation{}}
	h.ttl.Store(int64(ttl))
	return h, nil
}

const tokenKeyPrefix = "t:"

// hashKey is the cache key of a token by its stored hash.
func hashKey(hash string) string { return tokenKeyPrefix + hash }
func userKey(id string) string   { return userKeyPrefix + id }

// userKeyPrefix starts a user's cache key (and its invalidation).
const userKeyPrefix = "u:"

// begin returns the generation to record on a value loaded from now on.
func (h *hotCache) begin() uint64 { return h.gen.Load() }

func (h *hotCache) get(key string) (cacheEntry, bool) {
	e, ok := h.lookup(key)
	if ok {
		h.hits.Add(1)
	} else {
		h.misses.Add(1)
	}
	return e, ok
}

func (h *hotCache) lookup(key string) (cacheEntry, bool) {
	e, ok := h.c.Get(key)
	if !ok || e.gen < h.flushed.Load() {
		return e, false
	}
	if e.gen >= h.invalidatedAt.Load() {
		return e, true
	}
	h.mu.Lock()
	inv, seen := h.invalidated[key]
	h.mu.Unlock()
	if seen && e.gen < inv.gen {
		return e, false
	}
	return e, true
}

func (h *hotCache) set(key string, e cacheEntry) {
	h.c.SetWithTTL(key, e, 1, time.Duration(h.ttl.Load()))
}

// invalidate drops keys and makes sure that no load which began before now
// can put them back.
func (h *hotCache) invalidate(keys ...string) {
	g := h.gen.Add(1)
	now := time.Now()
	h.mu.Lock()
	for _, k := range keys {
		h.invalidated[k] = invalidation{gen: g, at: now}
	}
	h.invalidatedAt.Store(g)
	// Entries older than the TTL cannot be in the cache any more.
	if len(h.invalidated) > 1024 {
		for k, inv := range h.invalidated {
			if now.Sub(inv.at) > time.Duration(h.ttl.Load()) {
				delete(h.invalidated, k)
			}
		}
	}
	h.mu.Unlock()
	for _, k := range keys {
		h.c.Del(k)
	}
}

// flush drops every entry.
func (h *hotCache) flush() {
	h.flushed.Store(h.gen.Add(1))
	h.c.Clear()
}

func (h *hotCache) close() { h.c.Close() }
