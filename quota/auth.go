package quota

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// Principal is an authenticated request's token and user.
type Principal struct {
	Token *Token
	User  *User
}

// Authenticate resolves a token secret to its token and user, from the hot
// cache when possible. It returns an error matching ErrUnauthenticated for a
// malformed, unknown, revoked or expired token and ErrDisabled for a
// disabled user; the principal is returned with ErrDisabled.
func (s *Service) Authenticate(ctx context.Context, secret string) (*Principal, error) {
	if secret == "" {
		return nil, fmt.Errorf("missing bearer token: %w", ErrUnauthenticated)
	}
	key, ok := parseTokenKey(secret)
	if !ok {
		return nil, fmt.Errorf("malformed token: %w", ErrUnauthenticated)
	}
	hash := key[len(tokenKeyPrefix):]
	gen := s.cache.begin()
	tok, e, err := s.cachedToken(ctx, key, hash)
	if err != nil {
		return nil, err
	}
	now := s.clock.Now()
	if tok.Expired(now) {
		return nil, fmt.Errorf("token expired: %w", ErrUnauthenticated)
	}
	// The principal made for this token last time, if nothing was
	// invalidated since and it is younger than the cache TTL: one cache
	// lookup and no allocation per request.
	if cp := e.principal.Load(); cp != nil && s.cache.fresh(cp.gen) && now.Before(cp.expires) {
		if ns := now.UnixNano(); ns-cp.touched.Load() >= int64(time.Minute) {
			cp.touched.Store(ns)
			s.recordUse(hash, now)
		}
		if u := cp.p.User; u.Status != StatusActive {
			return cp.p, fmt.Errorf("user %s is disabled: %w", u.ID, ErrDisabled)
		}
		return cp.p, nil
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
	e.principal.Store(&cachedPrincipal{p: p, gen: gen, expires: now.Add(time.Duration(s.cache.ttl.Load()))})
	if u.Status != StatusActive {
		return p, fmt.Errorf("user %s is disabled: %w", u.ID, ErrDisabled)
	}
	return p, nil
}

// cachedToken returns the token of a hash and its cache entry.
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
