package boltstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
	// DistinctKeys caps the distinct keys (of meters with a key) a user
	// keeps, as redisstore's option does; quota.DefaultDistinctKeys when
	// zero.
	DistinctKeys int
	// OnFlushError, if set, is called from the background flusher when
	// writing counters fails; the counters stay dirty and are retried on the
	// next tick.
	OnFlushError func(error)
}

// Store is a quota.Store on a bbolt database file. It is safe for concurrent
// use. Create it with Open and release it with Close.
type Store struct {
	db     *bolt.DB
	clock  quota.Clock
	keyCap int

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
	if opts.DistinctKeys < 0 {
		return nil, fmt.Errorf("boltstore: distinct keys must not be negative, got %d", opts.DistinctKeys)
	}
	if opts.DistinctKeys == 0 {
		opts.DistinctKeys = quota.DefaultDistinctKeys
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
		keyCap:       opts.DistinctKeys,
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

var _ quota.Store = (*Store)(nil)
