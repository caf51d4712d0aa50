package boltstore

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// CreateUser stores a new user. The id, the normalized email and the
// external id (if any) must not be taken.
func (s *Store) CreateUser(ctx context.Context, u *quota.User, events ...quota.Event) error {
	if u.ID == "" {
		return quota.Invalid("id", "is required")
	}
	data, err := json.Marshal(u)
	if err != nil {
		return fmt.Errorf("boltstore: encode user: %w", err)
	}
	return s.update(ctx, func(tx *bolt.Tx) error {
		users := tx.Bucket(bucketUsers)
		if users.Get([]byte(u.ID)) != nil {
			return fmt.Errorf("user id already in use: %w", quota.ErrConflict)
		}
		if err := claimIndexes(tx, u.ID, nil, u); err != nil {
			return err
		}
		if err := putEvents(tx, events); err != nil {
			return err
		}
		return users.Put([]byte(u.ID), data)
	})
}

// claimIndexes points the email and external id indexes at u, releasing
// the entries of old (nil for a new user), and fails with ErrConflict if
// another user holds either.
func claimIndexes(tx *bolt.Tx, id string, old, u *quota.User) error {
	var oldEmail, oldExternal string
	if old != nil {
		oldEmail, oldExternal = quota.NormalizeEmail(old.Email), old.ExternalID
	}
	if err := claim(tx.Bucket(bucketEmails), id, oldEmail, quota.NormalizeEmail(u.Email), "email"); err != nil {
		return err
	}
	return claim(tx.Bucket(bucketExternals), id, oldExternal, u.ExternalID, "external id")
}

// claim moves one unique index entry of user id from oldKey to newKey.
// Empty keys are not indexed.
func claim(b *bolt.Bucket, id, oldKey, newKey, field string) error {
	if oldKey == newKey {
		return nil
	}
	if newKey != "" {
		if owner := b.Get([]byte(newKey)); owner != nil && string(owner) != id {
			return fmt.Errorf("%s already in use: %w", field, quota.ErrConflict)
		}
		if err := b.Put([]byte(newKey), []byte(id)); err != nil {
			return err
		}
	}
	if oldKey != "" {
		if owner := b.Get([]byte(oldKey)); string(owner) == id {
			return b.Delete([]byte(oldKey))
		}
	}
	return nil
}

// GetUser returns the user with that id.
func (s *Store) GetUser(ctx context.Context, id string) (*quota.User, error) {
	var u *quota.User
	err := s.view(ctx, func(tx *bolt.Tx) error {
		var err error
		u, err = getUser(tx, id)
		return err
	})
	return u, err
}

func getUser(tx *bolt.Tx, id string) (*quota.User, error) {
	data := tx.Bucket(bucketUsers).Get([]byte(id))
	if data == nil {
		return nil, fmt.Errorf("user %q: %w", id, quota.ErrNotFound)
	}
	u := new(quota.User)
	if err := json.Unmarshal(data, u); err != nil {
		return nil, fmt.Errorf("boltstore: decode user %q: %w", id, err)
	}
	return u, nil
}

// GetUserByEmail looks a user up by email (normalized before the lookup).
func (s *Store) GetUserByEmail(ctx context.Context, email string) (*quota.User, error) {
	return s.getUserByIndex(ctx, bucketEmails, quota.NormalizeEmail(email), "email")
}

// GetUserByExternalID looks a user up by external id.
func (s *Store) GetUserByExternalID(ctx context.Context, externalID string) (*quota.User, error) {
	return s.getUserByIndex(ctx, bucketExternals, externalID, "external id")
}

func (s *Store) getUserByIndex(ctx context.Context, bucket []byte, key, field string) (*quota.User, error) {
	var u *quota.User
	err := s.view(ctx, func(tx *bolt.Tx) error {
		var id []byte
		if key != "" {
			id = tx.Bucket(bucket).Get([]byte(key))
		}
		if id == nil {
			return fmt.Errorf("user with that %s: %w", field, quota.ErrNotFound)
		}
		var err error
		u, err = getUser(tx, string(id))
		return err
	})
	return u, err
}

// UpdateUser replaces the stored user that has u.ID, moving its email and
// external id index entries in the same transaction.
func (s *Store) UpdateUser(ctx context.Context, u *quota.User, events ...quota.Event) error {
	data, err := json.Marshal(u)
	if err != nil {
		return fmt.Errorf("boltstore: encode user: %w", err)
	}
	return s.update(ctx, func(tx *bolt.Tx) error {
		old, err := getUser(tx, u.ID)
		if err != nil {
			return err
		}
		if old.Revision != u.Revision-1 {
			return fmt.Errorf("user %q is at revision %d, not %d: %w", u.ID, old.Revision, u.Revision-1, quota.ErrStale)
		}
		if err := claimIndexes(tx, u.ID, old, u); err != nil {
			return err
		}
		if err := putEvents(tx, events); err != nil {
			return err
		}
		return tx.Bucket(bucketUsers).Put([]byte(u.ID), data)
	})
}

// DeleteUser removes the user, its index entries, its tokens and its
// counters in one transaction, and drops its counters from memory.
func (s *Store) DeleteUser(ctx context.Context, id string, events ...quota.Event) error {
	if err := s.begin(ctx); err != nil {
		return err
	}
	// flushMu keeps a flush from writing back counters snapshotted before
	// the delete; the shard lock keeps Admit from loading them meanwhile.
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	sh := s.shardOf(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	err := s.updateInOrder(func(tx *bolt.Tx) error {
		u, err := getUser(tx, id)
		if err != nil {
			return err
		}
		if err := claimIndexes(tx, id, u, &quota.User{}); err != nil {
			return err
		}
		tokens := tx.Bucket(bucketTokens)
		userTokens := tx.Bucket(bucketUserTokens)
		prefix := []byte(id + "/")
		var keys [][]byte
		c := userTokens.Cursor()
		for k, hash := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, hash = c.Next() {
			if err := tokens.Delete(hash); err != nil {
				return err
			}
			keys = append(keys, bytes.Clone(k))
		}
		for _, k := range keys {
			if err := userTokens.Delete(k); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketCounters).Delete([]byte(id)); err != nil {
			return err
		}
		if err := putEvents(tx, events); err != nil {
			return err
		}
		return tx.Bucket(bucketUsers).Delete([]byte(id))
	})
	if err != nil {
		return err
	}
	sh.drop(id, s.clock.Now())
	return nil
}

// ListUsers returns up to take users with ids greater than after, in id
// order, and whether more follow.
func (s *Store) ListUsers(ctx context.Context, after string, take int) ([]*quota.User, bool, error) {
	var (
		users []*quota.User
		more  bool
	)
	err := s.view(ctx, func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketUsers).Cursor()
		var k, v []byte
		if after == "" {
			k, v = c.First()
		} else {
			k, v = c.Seek([]byte(after))
			if k != nil && string(k) == after {
				k, v = c.Next()
			}
		}
		for ; k != nil; k, v = c.Next() {
			if len(users) >= take {
				more = true
				break
			}
			u := new(quota.User)
			if err := json.Unmarshal(v, u); err != nil {
				return fmt.Errorf("boltstore: decode user %q: %w", k, err)
			}
			users = append(users, u)
		}
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	return users, more, nil
}
