package quota

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Options configure a Service. Only Store is required.
type Options struct {
	Store Store
	// Clock defaults to the system clock. The store keeps its own clock for
	// windows; this one judges token expiry and stamps records. Headroom
	// slices and the principal cache measure time on the system clock
	// whatever Clock is: a slice's window end is the store's clock plus
	// the time since the store answered, which only a clock that moves
	// with the store's can tell.
	Clock Clock
	// Logger defaults to a no-op logger.
	Logger *zap.Logger
	// CacheTTL bounds how long a token or user stays in the hot cache
	// (default 30s): the backstop for changes made on another node.
	CacheTTL time.Duration
	// CacheEntries is the most tokens and users cached (default 100000).
	CacheEntries int64
	// TouchInterval is how often last-used times are written (default 10s).
	TouchInterval time.Duration
	// OnEvent, if set, is called with every event after the store has
	// committed it (with its change). It must not block.
	OnEvent func(Event)
	// HotPathTimeout, if set, is the deadline of each store call made to
	// authenticate and admit a request (the admin API's calls keep the
	// store's own deadline).
	HotPathTimeout time.Duration
	// Breaker guards the hot path's store calls; default NewBreaker with
	// its defaults.
	Breaker *Breaker
	// JournalSize bounds the settlements kept while the store is
	// unreachable (default DefaultJournalSize).
	JournalSize int
	// Broadcaster, if set, carries cache invalidations to and from the
	// other nodes that share the store.
	Broadcaster Broadcaster
	// OnStoreCall, if set, is told the duration and outcome of every
	// hot-path store call (OpAuthenticate, OpAdmit, OpSettle). It must not
	// block.
	OnStoreCall func(op string, took time.Duration, err error)
	// NoSlices turns headroom slices off: every request is admitted by
	// the store (see headroom.go). Usage read on another node is then never
	// behind, at the cost of a store round trip per request.
	NoSlices bool
}

// Broadcaster carries hot-cache invalidations between the nodes that share
// a store, so that a revoked token, a deleted or disabled user or a changed
// limit is enforced on every node within about a second.
type Broadcaster interface {
	// Publish tells the other nodes to drop the cache keys.
	Publish(ctx context.Context, keys []string) error
	// Listen delivers other nodes' invalidations to drop, and calls flush
	// each time the subscription is (re)established, since messages may
	// have been missed while it was down. It returns when ctx is done.
	Listen(ctx context.Context, drop func(keys []string), flush func())
}

// Service is the quota domain's entry point: account management with
// validation and events, token authentication through the hot cache, and
// admission. It is safe for concurrent use. It does not own its Store:
// whoever opened the store closes it.
type Service struct {
	store   Store
	clock   Clock
	log     *zap.Logger
	cache   *hotCache
	onEvent func(Event)

	touchMu      sync.Mutex
	touchPending map[string]time.Time
	touchLast    map[string]time.Time
	touchEvery   time.Duration
	stop         chan struct{}
	done         chan struct{}
	closeOnce    sync.Once

	hotTimeout     atomic.Int64 // time.Duration
	breaker        *Breaker
	journal        *journal
	journalDone    chan struct{}
	broadcaster    Broadcaster
	onStoreCall    func(op string, took time.Duration, err error)
	stopListening  context.CancelFunc
	listenerExited chan struct{}
	allow          *allowances // nil: no headroom slices
	refused        refusals
	allowDone      chan struct{}
	// principals are the principals served lately, by token secret, in
	// front of the cache (see Authenticate); at most cacheEntries.
	principals     sync.Map
	principalCount atomic.Int64
	cacheEntries   int64
}

// NewService returns a Service over opts.Store.
func NewService(opts Options) (*Service, error) {
	if opts.Store == nil {
		return nil, errors.New("quota: a store is required")
	}
	if opts.Clock == nil {
		opts.Clock = SystemClock{}
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.CacheTTL <= 0 {
		opts.CacheTTL = 30 * time.Second
	}
	if opts.CacheEntries <= 0 {
		opts.CacheEntries = 100_000
	}
	if opts.TouchInterval <= 0 {
		opts.TouchInterval = 10 * time.Second
	}
	if opts.Breaker == nil {
		opts.Breaker = NewBreaker(BreakerOptions{})
	}
	cache, err := newHotCache(opts.CacheEntries, opts.CacheTTL)
	if err != nil {
		return nil, fmt.Errorf("quota: creating cache: %w", err)
	}
	s := &Service{
		store: opts.Store, clock: opts.Clock, log: opts.Logger, cache: cache, onEvent: opts.OnEvent,
		touchPending: map[string]time.Time{}, touchLast: map[string]time.Time{}, touchEvery: opts.TouchInterval,
		stop: make(chan struct{}), done: make(chan struct{}),
		breaker: opts.Breaker, onStoreCall: opts.OnStoreCall,
		journal: newJournal(opts.Store, opts.Logger, opts.JournalSize, opts.Clock), journalDone: make(chan struct{}),
	}
	s.hotTimeout.Store(int64(opts.HotPathTimeout))
	s.cacheEntries = opts.CacheEntries
	if opts.Broadcaster != nil {
		s.broadcaster = opts.Broadcaster
	}
	if !opts.NoSlices {
		s.allow, s.allowDone = newAllowances(s), make(chan struct{})
		go func() {
			defer close(s.allowDone)
			s.allow.run(s.stop)
		}()
	}
	go s.touchLoop()
	go func() {
		defer close(s.journalDone)
		s.journal.run(s.stop)
	}()
	if opts.Broadcaster != nil {
		ctx, cancel := context.WithCancel(context.Background())
		s.stopListening, s.listenerExited = cancel, make(chan struct{})
		go func() {
			defer close(s.listenerExited)
			opts.Broadcaster.Listen(ctx, func(keys []string) {
				s.cache.invalidate(keys...)
				for _, k := range keys {
					if id, ok := strings.CutPrefix(k, recallPrefix); ok {
						s.refused.forget(id) // a reset elsewhere
					}
				}
				if s.allow != nil {
					s.allow.recalled(keys)
				}
			}, s.cache.flush)
		}()
	}
	return s, nil
}

// Store returns the service's store.
func (s *Service) Store() Store { return s.store }

// Close writes pending last-used times and releases the cache. It does not
// close the store.
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.done
		if s.allow != nil {
			<-s.allowDone
			s.allow.closed.Store(true)
			s.allow.sweep(time.Now(), true) // return every slice
		}
		<-s.journalDone
		if !s.journal.replay(time.Second) {
			s.log.Error("unsettled admissions lost at shutdown: the store is unreachable", zap.Int("count", s.journal.len()))
		}
		if s.stopListening != nil {
			s.stopListening()
			<-s.listenerExited
		}
		s.cache.close()
	})
	return nil
}

// hot runs a hot-path store call with the hot-path deadline, through the
// circuit breaker. Failures come back matching ErrUnavailable.
func (s *Service) hot(ctx context.Context, op string, call func(ctx context.Context) error) error {
	if d := time.Duration(s.hotTimeout.Load()); d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	if s.onStoreCall == nil {
		return s.breaker.Do(func() error { return call(ctx) })
	}
	start := time.Now()
	err := s.breaker.Do(func() error { return call(ctx) })
	s.onStoreCall(op, time.Since(start), err)
	return err
}

// Store operations, as OnStoreCall names them.
const (
	OpAuthenticate = "authenticate"
	OpAdmit        = "admit"
	OpSettle       = "settle"
)

// Stats are a service's gauges: the hot cache's hits and misses, the
// settlements waiting for the store, and whether the breaker is open.
type Stats struct {
	CacheHits, CacheMisses int64
	JournalDepth           int
	BreakerOpen            bool
}

// Stats returns the service's gauges now.
func (s *Service) Stats() Stats {
	return Stats{
		CacheHits: s.cache.hits.Load(), CacheMisses: s.cache.misses.Load(),
		JournalDepth: s.journal.len(), BreakerOpen: s.breaker.Open(),
	}
}

// Tune changes the hot path's store deadline and the cache TTL of a
// running service (a config reload keeps the service but may change them);
// zero leaves a setting as it is. Entries already cached keep their TTL.
func (s *Service) Tune(hotPathTimeout, cacheTTL time.Duration) {
	if hotPathTimeout > 0 {
		s.hotTimeout.Store(int64(hotPathTimeout))
	}
	if cacheTTL > 0 {
		s.cache.ttl.Store(int64(cacheTTL))
	}
}

// invalidate drops cache keys here and on every other node.
func (s *Service) invalidate(ctx context.Context, keys ...string) {
	s.cache.invalidate(keys...)
	if s.broadcaster == nil {
		return
	}
	if err := s.broadcaster.Publish(ctx, keys); err != nil {
		// The other nodes' cache TTL is the backstop.
		s.log.Warn("publishing a cache invalidation", zap.Error(err))
	}
}

// published tells OnEvent about events a store has committed.
func (s *Service) published(events ...Event) {
	if s.onEvent == nil {
		return
	}
	for _, e := range events {
		s.onEvent(e)
	}
}

func (s *Service) now() time.Time { return s.clock.Now().UTC().Truncate(time.Millisecond) }
