package boltstore

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// CreateToken stores a token of an existing user; its hash and its id (per
// user) must not be taken.
func (s *Store) CreateToken(ctx context.Context, t *quota.Token, events ...quota.Event) error {
	switch {
	case t.ID == "":
		return quota.Invalid("id", "is required")
	case t.Hash == "":
		return quota.Invalid("hash", "is required")
	}
	data, err := json.Marshal(t)
	if err != nil {
		return fmt.Errorf("boltstore: encode token: %w", err)
	}
	return s.update(ctx, func(tx *bolt.Tx) error {
		if tx.Bucket(bucketUsers).Get([]byte(t.UserID)) == nil {
			return fmt.Errorf("user %q: %w", t.UserID, quota.ErrNotFound)
		}
		tokens := tx.Bucket(bucketTokens)
		if tokens.Get([]byte(t.Hash)) != nil {
			return fmt.Errorf("token hash already in use: %w", quota.ErrConflict)
		}
		userTokens := tx.Bucket(bucketUserTokens)
		key := userTokenKey(t.UserID, t.ID)
		if userTokens.Get(key) != nil {
			return fmt.Errorf("token id already in use: %w", quota.ErrConflict)
		}
		if err := tokens.Put([]byte(t.Hash), data); err != nil {
			return err
		}
		if err := putEvents(tx, events); err != nil {
			return err
		}
		return userTokens.Put(key, []byte(t.Hash))
	})
}

func userTokenKey(userID, tokenID string) []byte {
	return []byte(userID + "/" + tokenID)
}

// GetTokenByHash returns the token whose secret hashes to hash.
func (s *Store) GetTokenByHash(ctx context.Context, hash string) (*quota.Token, error) {
	var t *quota.Token
	err := s.view(ctx, func(tx *bolt.Tx) error {
		var err error
		t, err = getToken(tx, []byte(hash))
		return err
	})
	return t, err
}

func getToken(tx *bolt.Tx, hash []byte) (*quota.Token, error) {
	data := tx.Bucket(bucketTokens).Get(hash)
	if data == nil {
		return nil, fmt.Errorf("token: %w", quota.ErrNotFound)
	}
	t := new(quota.Token)
	if err := json.Unmarshal(data, t); err != nil {
		return nil, fmt.Errorf("boltstore: decode token: %w", err)
	}
	return t, nil
}

// GetToken returns one token of a user by its id.
func (s *Store) GetToken(ctx context.Context, userID, tokenID string) (*quota.Token, error) {
	var t *quota.Token
	err := s.view(ctx, func(tx *bolt.Tx) error {
		var err error
		t, err = getUserToken(tx, userID, tokenID)
		return err
	})
	return t, err
}

func getUserToken(tx *bolt.Tx, userID, tokenID string) (*quota.Token, error) {
	hash := tx.Bucket(bucketUserTokens).Get(userTokenKey(userID, tokenID))
	if hash == nil {
		return nil, fmt.Errorf("token %q of user %q: %w", tokenID, userID, quota.ErrNotFound)
	}
	return getToken(tx, hash)
}

// UpdateToken replaces a token over the revision it was read at, in one
// transaction with its events, keeping the later last-used time.
func (s *Store) UpdateToken(ctx context.Context, t *quota.Token, events ...quota.Event) error {
	return s.update(ctx, func(tx *bolt.Tx) error {
		old, err := getUserToken(tx, t.UserID, t.ID)
		if err != nil {
			return err
		}
		c, err := t.Replacing(old)
		if err != nil {
			return err
		}
		data, err := json.Marshal(c)
		if err != nil {
			return fmt.Errorf("boltstore: encode token: %w", err)
		}
		if err := putEvents(tx, events); err != nil {
			return err
		}
		return tx.Bucket(bucketTokens).Put([]byte(old.Hash), data)
	})
}

// ListTokens returns a user's tokens in creation order (token ids are
// UUIDv7). It fails with ErrNotFound if the user does not exist.
func (s *Store) ListTokens(ctx context.Context, userID string) ([]*quota.Token, error) {
	tokens := []*quota.Token{}
	err := s.view(ctx, func(tx *bolt.Tx) error {
		if tx.Bucket(bucketUsers).Get([]byte(userID)) == nil {
			return fmt.Errorf("user %q: %w", userID, quota.ErrNotFound)
		}
		prefix := []byte(userID + "/")
		c := tx.Bucket(bucketUserTokens).Cursor()
		for k, hash := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, hash = c.Next() {
			t, err := getToken(tx, hash)
			if err != nil {
				return fmt.Errorf("boltstore: token %q of user %q: %w", k[len(prefix):], userID, err)
			}
			tokens = append(tokens, t)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return tokens, nil
}

// DeleteToken revokes one token of a user and returns it.
func (s *Store) DeleteToken(ctx context.Context, userID, tokenID string, events ...quota.Event) (*quota.Token, error) {
	var t *quota.Token
	err := s.update(ctx, func(tx *bolt.Tx) error {
		userTokens := tx.Bucket(bucketUserTokens)
		key := userTokenKey(userID, tokenID)
		hash := userTokens.Get(key)
		if hash == nil {
			return fmt.Errorf("token %q of user %q: %w", tokenID, userID, quota.ErrNotFound)
		}
		var err error
		if t, err = getToken(tx, hash); err != nil {
			return err
		}
		if err := tx.Bucket(bucketTokens).Delete(hash); err != nil {
			return err
		}
		if err := putEvents(tx, events); err != nil {
			return err
		}
		return userTokens.Delete(key)
	})
	if err != nil {
		return nil, err
	}
	// The token's own counters go too (best effort: the token is revoked
	// whatever happens here, and what is left goes with its user). A
	// settlement still in flight for it may write one again.
	prefix := quota.TokenResource(tokenID, "")
	_ = s.withUser(ctx, userID, func(e *entry, _ time.Time) bool {
		changed := false
		for k := range e.counters {
			if strings.HasPrefix(k, prefix) {
				delete(e.counters, k)
				changed = true
			}
		}
		for k := range e.keys {
			if strings.HasPrefix(k, prefix) {
				delete(e.keys, k)
				changed = true
			}
		}
		return changed
	})
	return t, nil
}

// TouchTokens records last-used times of tokens in one transaction. Unknown
// (revoked) hashes are skipped, and a time never moves LastUsedAt backwards.
func (s *Store) TouchTokens(ctx context.Context, used map[string]time.Time) error {
	if len(used) == 0 {
		return s.begin(ctx)
	}
	return s.update(ctx, func(tx *bolt.Tx) error {
		tokens := tx.Bucket(bucketTokens)
		for hash, at := range used {
			if tokens.Get([]byte(hash)) == nil {
				continue
			}
			t, err := getToken(tx, []byte(hash))
			if err != nil {
				return err
			}
			if !t.Touch(at) {
				continue
			}
			data, err := json.Marshal(t)
			if err != nil {
				return fmt.Errorf("boltstore: encode token: %w", err)
			}
			if err := tokens.Put([]byte(hash), data); err != nil {
				return err
			}
		}
		return nil
	})
}
