package quota

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
)

// Principal is an authenticated request's token and user.
type Principal struct {
	Token *Token
	User  *User

	// slices is this node's slice state of User (see AdmitPrincipal).
	slices atomic.Pointer[userSlices]
}

// Authenticate resolves a token secret to its token and user, from the hot
// cache when possible. It returns an error matching ErrUnauthenticated for a
// malformed, unknown, revoked or expired token and ErrDisabled for a
// disabled user; the principal is returned with ErrDisabled.
func (s *Service) Authenticate(ctx context.Context, secret string) (*Principal, error) {
	return s.AuthenticateAt(ctx, secret, s.clock.Now())
}

// Now reads the service's clock: a request's time, for AuthenticateAt and
// AdmitPrincipal.
func (s *Service) Now() time.Time { return s.clock.Now() }

// AuthenticateAt is Authenticate at now, the time Now returned for this
// request.
func (s *Service) AuthenticateAt(ctx context.Context, secret string, now time.Time) (*Principal, error) {
	if secret == "" {
		return nil, fmt.Errorf("missing bearer token: %w", ErrUnauthenticated)
	}
	if !shapedLikeToken(secret) {
		return nil, fmt.Errorf("malformed token: %w", ErrUnauthenticated)
	}
	wall := now // the cache's TTL runs on the system clock
	if _, system := s.clock.(SystemClock); !system {
		wall = time.Now()
	}
	// The principals in front of the cache, keyed by the secret itself: a
	// map read, no hash and no lock, for a token seen within the TTL when
	// nothing was invalidated since. The secrets stay in this process's
	// memory (as they pass through it on every request), never in a store
	// or a log.
	if v, ok := s.principals.Load(secret); ok {
		if cp := v.(*cachedPrincipal); s.cache.fresh(cp.gen) && wall.Before(cp.expires) && !cp.p.Token.Expired(now) {
			s.cache.hits.Add(1)
			return s.principal(cp, now)
		}
		s.dropPrincipal(secret)
	}
	// Not served lately: its format and checksum first (the principals
	// above hold only secrets that passed them).
	if !wellFormed(secret) {
		return nil, fmt.Errorf("malformed token: %w", ErrUnauthenticated)
	}
	key := tokenKey(secret)
	hash := key[len(tokenKeyPrefix):]
	gen := s.cache.begin()
	tok, e, err := s.cachedToken(ctx, key, hash)
	if err != nil {
		return nil, err
	}
	if tok.Expired(now) {
		return nil, fmt.Errorf("token expired: %w", ErrUnauthenticated)
	}
	// The principal made for this token last time, if nothing was
	// invalidated since and it is younger than the cache TTL: one cache
	// lookup and no allocation per request.
	if cp := e.principal.Load(); cp != nil && s.cache.fresh(cp.gen) && wall.Before(cp.expires) {
		return s.principal(cp, now)
	}
	u, err := s.cachedUser(ctx, tok.UserID, e.userKey)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("token of a deleted user: %w", ErrUnauthenticated)
	}
	if err != nil {
		return nil, err
	}
	s.recordUse(hash, now)
	p := &Principal{Token: tok, User: u}
	// Expiry on the system clock, as the cache's own TTL.
	cp := &cachedPrincipal{p: p, hash: hash, gen: gen, expires: wall.Add(time.Duration(s.cache.ttl.Load()))}
	cp.touched.Store(now.UnixNano())
	e.principal.Store(cp)
	if s.principalCount.Load() < s.cacheEntries {
		// A copy: secret may be part of a larger header value.
		if _, loaded := s.principals.Swap(strings.Clone(secret), cp); !loaded {
			s.principalCount.Add(1)
		}
	}
	if u.Status != StatusActive {
		return p, fmt.Errorf("user %s is disabled: %w", u.ID, ErrDisabled)
	}
	return p, nil
}

// cachedToken returns the token of a hash and its cache entry.
// principal serves a cached principal: its token's use is noted at most
// once a minute, without a lock.
func (s *Service) principal(cp *cachedPrincipal, now time.Time) (*Principal, error) {
	if ns := now.UnixNano(); ns-cp.touched.Load() >= int64(time.Minute) {
		cp.touched.Store(ns)
		s.recordUse(cp.hash, now)
	}
	if u := cp.p.User; u.Status != StatusActive {
		return cp.p, fmt.Errorf("user %s is disabled: %w", u.ID, ErrDisabled)
	}
	return cp.p, nil
}

func (s *Service) dropPrincipal(secret string) {
	if _, loaded := s.principals.LoadAndDelete(secret); loaded {
		s.principalCount.Add(-1)
	}
}

// sweepPrincipals forgets the principals that may no longer be served.
func (s *Service) sweepPrincipals(now time.Time) {
	s.principals.Range(func(k, v any) bool {
		if cp := v.(*cachedPrincipal); !s.cache.fresh(cp.gen) || !now.Before(cp.expires) { // now: the system clock
			s.dropPrincipal(k.(string))
		}
		return true
	})
}

func (s *Service) cachedToken(ctx context.Context, key, hash string) (*Token, cacheEntry, error) {
	if e, ok := s.cache.get(key); ok {
		return e.token, e, nil
	}
	gen := s.cache.begin()
	var tok *Token
	err := s.hot(ctx, OpAuthenticate, func(ctx context.Context) (err error) {
		tok, err = s.store.GetTokenByHash(ctx, hash)
		return err
	})
	if errors.Is(err, ErrNotFound) {
		return nil, cacheEntry{}, fmt.Errorf("unknown or revoked token: %w", ErrUnauthenticated)
	}
	if err != nil {
		return nil, cacheEntry{}, err
	}
	e := cacheEntry{gen: gen, token: tok, userKey: userKey(tok.UserID), principal: new(atomic.Pointer[cachedPrincipal])}
	s.cache.set(key, e)
	return tok, e, nil
}

func (s *Service) cachedUser(ctx context.Context, id, key string) (*User, error) {
	if e, ok := s.cache.get(key); ok {
		return e.user, nil
	}
	gen := s.cache.begin()
	var u *User
	err := s.hot(ctx, OpAuthenticate, func(ctx context.Context) (err error) {
		u, err = s.store.GetUser(ctx, id)
		return err
	})
	if err != nil {
		return nil, err
	}
	s.cache.set(key, cacheEntry{gen: gen, user: u})
	return u, nil
}
