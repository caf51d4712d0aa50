package boltstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// DefaultFlushInterval is how often changed counters are written to disk when
// Options.FlushInterval is zero.
const DefaultFlushInterval = time.Second

// openTimeout is how long Open waits for the file lock that another process
// may hold, so a second Caddy on the same file fails fast instead of hanging.
const openTimeout = time.Second

// schemaVersion is the layout described in the package doc.
const schemaVersion = "1"

var (
	bucketUsers      = []byte("users")
	bucketEmails     = []byte("emails")
	bucketExternals  = []byte("externals")
	bucketTokens     = []byte("tokens")
	bucketUserTokens = []byte("usertokens")
	bucketCounters   = []byte("counters")
	bucketMeta       = []byte("meta")

	keySchema = []byte("schema")
)

// ErrClosed is returned by every method of a Store after Close.
var ErrClosed = errors.New("boltstore: store is closed")

// Options configures Open. The zero value of every field but Path is usable.
type Options struct {
	// Path is the database file; its directory is created (0700) if needed.
	Path string
	// FlushInterval is how often changed usage counters are written to disk;
	// it bounds what a crash can lose. Zero means DefaultFlushInterval.
	FlushInterval time.Duration
	// Clock tells the time of the usage windows. Nil means quota.SystemClock.
	Clock quota.Clock
	// Thresholds are the percentages of a limit at which usage.threshold
	// events fire (none: no threshold events).
	Thresholds []int64
	// OnFlushError, if set, is called from the background flusher when
	// writing counters fails; the counters stay dirty and are retried on the
	// next tick.
	OnFlushError func(error)
}

// Store is a quota.Store on a bbolt database file. It is safe for concurrent
// use. Create it with Open and release it with Close.
type Store struct {
	db    *bolt.DB
	clock quota.Clock

	onFlushError func(error)
	percents     []int64

	shards [shardCount]shard

	// evMu guards pendingEvents: events decided with counters in memory,
	// written with them by the next flush.
	evMu          sync.Mutex
	pendingEvents []quota.Event

	// flushMu serializes flushes, so counter snapshots reach the disk in
	// the order they were taken, and keeps DeleteUser out of the middle of
	// a flush. Lock order: flushMu before any shard lock.
	flushMu sync.Mutex

	closed    atomic.Bool
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// Open opens (or creates, mode 0600) the database at opts.Path and starts the
// background counter flusher. It fails after about a second if another
// process holds the file.
func Open(opts Options) (*Store, error) {
	if opts.Path == "" {
		return nil, errors.New("boltstore: a database path is required")
	}
	if opts.FlushInterval < 0 {
		return nil, fmt.Errorf("boltstore: flush interval must not be negative, got %s", opts.FlushInterval)
	}
	if opts.FlushInterval == 0 {
		opts.FlushInterval = DefaultFlushInterval
	}
	if opts.Clock == nil {
		opts.Clock = quota.SystemClock{}
	}
	if err := os.MkdirAll(filepath.Dir(opts.Path), 0o700); err != nil {
		return nil, fmt.Errorf("boltstore: create directory of %s: %w", opts.Path, err)
	}
	db, err := bolt.Open(opts.Path, 0o600, &bolt.Options{Timeout: openTimeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("boltstore: database file %s is locked by another process: %w", opts.Path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("boltstore: open %s: %w", opts.Path, err)
	}
	if err := initBuckets(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("boltstore: initialize %s: %w", opts.Path, err)
	}
	s := &Store{
		db:           db,
		clock:        opts.Clock,
		onFlushError: opts.OnFlushError,
		percents:     opts.Thresholds,
		stop:         make(chan struct{}),
		done:         make(chan struct{}),
	}
	for i := range s.shards {
		s.shards[i].entries = make(map[string]*entry)
		s.shards[i].dirty = make(map[string]*entry)
	}
	go s.flushLoop(opts.FlushInterval)
	return s, nil
}

func initBuckets(db *bolt.DB) error {
	return db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketUsers, bucketEmails, bucketExternals, bucketTokens, bucketUserTokens, bucketCounters, bucketMeta, bucketEvents, bucketEventCursors} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		meta := tx.Bucket(bucketMeta)
		switch v := meta.Get(keySchema); {
		case v == nil:
			return meta.Put(keySchema, []byte(schemaVersion))
		case string(v) != schemaVersion:
			return fmt.Errorf("unsupported schema version %q (this build reads %q)", v, schemaVersion)
		}
		return nil
	})
}

// Close stops the flusher, writes every changed counter, and closes the
// database. It is safe to call more than once; later calls return the first
// result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		// Admit checks closed under its shard lock, and the final flush
		// takes every shard lock after this store, so no admitted charge
		// can slip past the final flush.
		s.closed.Store(true)
		close(s.stop)
		<-s.done
		flushErr := s.flush()
		closeErr := s.db.Close()
		s.closeErr = errors.Join(flushErr, closeErr)
		if s.closeErr != nil {
			s.closeErr = fmt.Errorf("boltstore: close: %w", s.closeErr)
		}
	})
	return s.closeErr
}

// begin checks that the store is open and ctx not done before a call.
func (s *Store) begin(ctx context.Context) error {
	if s.closed.Load() {
		return ErrClosed
	}
	return ctx.Err()
}

func (s *Store) view(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := s.begin(ctx); err != nil {
		return err
	}
	return s.db.View(fn)
}

func (s *Store) update(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := s.begin(ctx); err != nil {
		return err
	}
	return s.updateInOrder(fn)
}

// updateInOrder runs a write transaction that first writes the events
// decided with counters and not flushed yet, so that the outbox keeps the
// order in which events happened.
func (s *Store) updateInOrder(fn func(tx *bolt.Tx) error) error {
	events := s.takeEvents()
	err := s.db.Update(func(tx *bolt.Tx) error {
		if err := putEvents(tx, events); err != nil {
			return err
		}
		return fn(tx)
	})
	if err != nil {
		s.requeueEvents(events)
	}
	return err
}

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
		if old.Revision != t.Revision-1 {
			return fmt.Errorf("token %q is at revision %d, not %d: %w", t.ID, old.Revision, t.Revision-1, quota.ErrStale)
		}
		c := *t
		c.Hash, c.CreatedAt, c.LastUsedAt = old.Hash, old.CreatedAt, old.LastUsedAt
		if t.LastUsedAt != nil {
			c.Touch(*t.LastUsedAt)
		}
		data, err := json.Marshal(&c)
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

var _ quota.Store = (*Store)(nil)
