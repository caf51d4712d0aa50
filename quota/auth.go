package quota

import (
	"context"
	"errors"
	"fmt"
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
	tok, ukey, err := s.cachedToken(ctx, key, hash)
	if err != nil {
		return nil, err
	}
	now := s.clock.Now()
	if tok.Expired(now) {
		return nil, fmt.Errorf("token expired: %w", ErrUnauthenticated)
	}
	u, err := s.cachedUser(ctx, tok.UserID, ukey)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("token of a deleted user: %w", ErrUnauthenticated)
	}
	if err != nil {
		return nil, err
	}
	s.recordUse(hash, now)
	p := &Principal{Token: tok, User: u}
	if u.Status != StatusActive {
		return p, fmt.Errorf("user %s is disabled: %w", u.ID, ErrDisabled)
	}
	return p, nil
}

// cachedToken returns the token of a hash and its user's cache key.
func (s *Service) cachedToken(ctx context.Context, key, hash string) (*Token, string, error) {
	if e, ok := s.cache.get(key); ok {
		return e.token, e.userKey, nil
	}
	gen := s.cache.begin()
	var tok *Token
	err := s.hot(ctx, OpAuthenticate, func(ctx context.Context) (err error) {
		tok, err = s.store.GetTokenByHash(ctx, hash)
		return err
	})
	if errors.Is(err, ErrNotFound) {
		return nil, "", fmt.Errorf("unknown or revoked token: %w", ErrUnauthenticated)
	}
	if err != nil {
		return nil, "", err
	}
	ukey := userKey(tok.UserID)
	s.cache.set(key, cacheEntry{gen: gen, token: tok, userKey: ukey})
	return tok, ukey, nil
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
