package quota

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
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
	// windows; this one judges token expiry and stamps records.
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
	// OnEvent, if set, is called after every account, token and limit
	// change. It must not block.
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

// Event types.
const (
	EventUserCreated   = "user.created"
	EventUserUpdated   = "user.updated"
	EventUserDisabled  = "user.disabled"
	EventUserEnabled   = "user.enabled"
	EventUserDeleted   = "user.deleted"
	EventTokenCreated  = "token.created"
	EventTokenRevoked  = "token.revoked"
	EventLimitsUpdated = "limits.updated"
	EventUsageReset    = "usage.reset"
	EventCreditsAdded  = "credits.added"
)

// Event describes one change to an account, a token or a limit.
type Event struct {
	Type      string    `json:"type"`
	UserID    string    `json:"userId"`
	TokenID   string    `json:"tokenId,omitempty"`
	Resources []string  `json:"resources,omitempty"`
	At        time.Time `json:"at"`
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
	stopListening  context.CancelFunc
	listenerExited chan struct{}
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
		breaker: opts.Breaker,
		journal: newJournal(opts.Store, opts.Logger, opts.JournalSize), journalDone: make(chan struct{}),
	}
	s.hotTimeout.Store(int64(opts.HotPathTimeout))
	go s.touchLoop()
	go func() {
		defer close(s.journalDone)
		s.journal.run(s.stop)
	}()
	if opts.Broadcaster != nil {
		ctx, cancel := context.WithCancel(context.Background())
		s.broadcaster, s.stopListening, s.listenerExited = opts.Broadcaster, cancel, make(chan struct{})
		go func() {
			defer close(s.listenerExited)
			opts.Broadcaster.Listen(ctx, func(keys []string) { s.cache.invalidate(keys...) }, s.cache.flush)
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
func (s *Service) hot(ctx context.Context, call func(ctx context.Context) error) error {
	if d := time.Duration(s.hotTimeout.Load()); d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	return s.breaker.Do(func() error { return call(ctx) })
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

func (s *Service) emit(typ, userID, tokenID string, resources ...string) {
	if s.onEvent == nil {
		return
	}
	s.onEvent(Event{Type: typ, UserID: userID, TokenID: tokenID, Resources: resources, At: s.now()})
}

func (s *Service) now() time.Time { return s.clock.Now().UTC().Truncate(time.Millisecond) }

// NewUser is the input of CreateUser.
type NewUser struct {
	Name       string
	Email      string
	ExternalID string
	Limits     Limits
	Credits    int64
	// Status defaults to active.
	Status Status
}

// CreateUser validates and stores a new user.
func (s *Service) CreateUser(ctx context.Context, in NewUser) (*User, error) {
	now := s.now()
	u := &User{
		ID: NewID(), Name: strings.TrimSpace(in.Name), Email: NormalizeEmail(in.Email), ExternalID: in.ExternalID,
		Status: in.Status, Limits: in.Limits.Clone(), Credits: in.Credits, CreatedAt: now, UpdatedAt: now,
	}
	if u.Status == "" {
		u.Status = StatusActive
	}
	if u.Limits == nil {
		u.Limits = Limits{}
	}
	if err := validateUser(u); err != nil {
		return nil, err
	}
	if err := s.store.CreateUser(ctx, u); err != nil {
		return nil, err
	}
	s.emit(EventUserCreated, u.ID, "")
	return u, nil
}

// GetUser returns a user by id.
func (s *Service) GetUser(ctx context.Context, id string) (*User, error) {
	if !validID(id) {
		return nil, fmt.Errorf("user %q: %w", id, ErrNotFound)
	}
	return s.store.GetUser(ctx, id)
}

// GetUserByEmail looks a user up by email (case-insensitive).
func (s *Service) GetUserByEmail(ctx context.Context, email string) (*User, error) {
	email = NormalizeEmail(email)
	if email == "" || len(email) > MaxEmailLength {
		return nil, fmt.Errorf("email %q: %w", email, ErrNotFound)
	}
	return s.store.GetUserByEmail(ctx, email)
}

// GetUserByExternalID looks a user up by external id.
func (s *Service) GetUserByExternalID(ctx context.Context, ext string) (*User, error) {
	if ext == "" || len(ext) > MaxExternalIDLength {
		return nil, fmt.Errorf("external id %q: %w", ext, ErrNotFound)
	}
	return s.store.GetUserByExternalID(ctx, ext)
}

// MaxPageSize is the largest page ListUsers returns.
const MaxPageSize = 1000

// ListUsers returns a page of users in creation order after the cursor
// (an id; "" for the first page) and the cursor of the next page ("" on
// the last).
func (s *Service) ListUsers(ctx context.Context, after string, take int) ([]*User, string, error) {
	if take < 1 || take > MaxPageSize {
		return nil, "", Invalid("take", "must be between 1 and %d", MaxPageSize)
	}
	if after != "" && !validID(after) {
		return nil, "", Invalid("cursor", "is not a cursor this API returned")
	}
	users, more, err := s.store.ListUsers(ctx, after, take)
	if err != nil {
		return nil, "", err
	}
	next := ""
	if more && len(users) > 0 {
		next = users[len(users)-1].ID
	}
	return users, next, nil
}

// UserPatch is the input of UpdateUser; nil fields are left unchanged.
type UserPatch struct {
	Name       *string
	Email      *string
	ExternalID *string
	// Limits are merged: named resources are replaced, a nil entry removes
	// a resource's limits.
	Limits Limits
	Status *Status
}

// UpdateUser applies a patch.
func (s *Service) UpdateUser(ctx context.Context, id string, p UserPatch) (*User, error) {
	return s.modifyUser(ctx, id, func(u *User) {
		if p.Name != nil {
			u.Name = strings.TrimSpace(*p.Name)
		}
		if p.Email != nil {
			u.Email = NormalizeEmail(*p.Email)
		}
		if p.ExternalID != nil {
			u.ExternalID = *p.ExternalID
		}
		if p.Limits != nil {
			u.Limits = u.Limits.Merge(p.Limits)
		}
		if p.Status != nil {
			u.Status = *p.Status
		}
	})
}

// AddCredits tops up a user's prepaid credits by amount (> 0).
func (s *Service) AddCredits(ctx context.Context, id string, amount int64) (*User, error) {
	if amount <= 0 || amount > MaxLimit {
		return nil, Invalid("amount", "must be between 1 and %d", int64(MaxLimit))
	}
	u, err := s.modifyUser(ctx, id, func(u *User) {
		u.Credits = min(u.Credits+amount, MaxLimit)
	})
	if err == nil {
		s.emit(EventCreditsAdded, id, "", ResourceCredits)
	}
	return u, err
}

// SetLimits replaces a user's limits.
func (s *Service) SetLimits(ctx context.Context, id string, limits Limits) (*User, error) {
	return s.modifyUser(ctx, id, func(u *User) { u.Limits = limits.Clone() })
}

// PatchLimits merges limits into a user's limits.
func (s *Service) PatchLimits(ctx context.Context, id string, patch Limits) (*User, error) {
	return s.modifyUser(ctx, id, func(u *User) { u.Limits = u.Limits.Merge(patch) })
}

func (s *Service) modifyUser(ctx context.Context, id string, change func(*User)) (*User, error) {
	old, err := s.GetUser(ctx, id)
	if err != nil {
		return nil, err
	}
	u := old.Clone()
	change(u)
	if u.Limits == nil {
		u.Limits = Limits{}
	}
	deactivated := old.Status != StatusDisabled && u.Status == StatusDisabled
	if deactivated {
		// A deactivated account keeps no prepaid balance.
		u.Credits = 0
	}
	if err := validateUser(u); err != nil {
		return nil, err
	}
	u.UpdatedAt = s.now()
	if err := s.store.UpdateUser(ctx, u); err != nil {
		return nil, err
	}
	if deactivated {
		if err := s.store.ResetUsage(ctx, id, []string{ResourceCredits}); err != nil {
			return nil, err
		}
	}
	s.invalidate(ctx, userKey(id))
	s.emit(EventUserUpdated, id, "")
	if old.Status != u.Status {
		if u.Status == StatusDisabled {
			s.emit(EventUserDisabled, id, "")
		} else {
			s.emit(EventUserEnabled, id, "")
		}
	}
	if changed := changedResources(old.Limits, u.Limits); len(changed) > 0 {
		s.emit(EventLimitsUpdated, id, "", changed...)
	}
	return u, nil
}

func changedResources(a, b Limits) []string {
	var out []string
	seen := map[string]bool{}
	for _, m := range []Limits{a, b} {
		for name := range m {
			if seen[name] {
				continue
			}
			seen[name] = true
			if fmt.Sprint(a[name]) != fmt.Sprint(b[name]) {
				out = append(out, name)
			}
		}
	}
	sort.Strings(out)
	return out
}

// DeleteUser deletes a user, its tokens and its counters.
func (s *Service) DeleteUser(ctx context.Context, id string) error {
	if !validID(id) {
		return fmt.Errorf("user %q: %w", id, ErrNotFound)
	}
	tokens, err := s.store.ListTokens(ctx, id)
	if err != nil {
		return err
	}
	if err := s.store.DeleteUser(ctx, id); err != nil {
		return err
	}
	keys := []string{userKey(id)}
	for _, t := range tokens {
		keys = append(keys, tokenKey(t.Hash))
	}
	s.invalidate(ctx, keys...)
	s.emit(EventUserDeleted, id, "")
	return nil
}

// NewToken is the input of CreateToken.
type NewToken struct {
	Name      string
	ExpiresAt *time.Time
}

// IssuedToken is a freshly created token with its secret, which is never
// shown again.
type IssuedToken struct {
	Token
	Secret string `json:"token"`
}

// MaxTokenNameLength caps token names.
const MaxTokenNameLength = 200

// CreateToken issues a new token for a user.
func (s *Service) CreateToken(ctx context.Context, userID string, in NewToken) (*IssuedToken, error) {
	var v validator
	name := strings.TrimSpace(in.Name)
	if len(name) > MaxTokenNameLength {
		v.add("name", "must be at most %d characters", MaxTokenNameLength)
	}
	now := s.now()
	if in.ExpiresAt != nil && !in.ExpiresAt.After(now) {
		v.add("expiresAt", "must be in the future")
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	if _, err := s.GetUser(ctx, userID); err != nil {
		return nil, err
	}
	secret, err := NewTokenSecret()
	if err != nil {
		return nil, fmt.Errorf("generating token: %w", err)
	}
	t := Token{
		ID: NewID(), UserID: userID, Name: name, Prefix: TokenDisplayPrefix(secret),
		Hash: HashTokenSecret(secret), CreatedAt: now,
	}
	if in.ExpiresAt != nil {
		exp := in.ExpiresAt.UTC().Truncate(time.Millisecond)
		t.ExpiresAt = &exp
	}
	if err := s.store.CreateToken(ctx, &t); err != nil {
		return nil, err
	}
	s.emit(EventTokenCreated, userID, t.ID)
	return &IssuedToken{Token: t.Public(), Secret: secret}, nil
}

// ListTokens lists a user's tokens, without secrets or hashes.
func (s *Service) ListTokens(ctx context.Context, userID string) ([]Token, error) {
	if _, err := s.GetUser(ctx, userID); err != nil {
		return nil, err
	}
	ts, err := s.store.ListTokens(ctx, userID)
	if err != nil {
		return nil, err
	}
	out := make([]Token, len(ts))
	for i, t := range ts {
		out[i] = t.Public()
	}
	return out, nil
}

// RevokeToken deletes a user's token; it is refused from the next request
// on this node.
func (s *Service) RevokeToken(ctx context.Context, userID, tokenID string) error {
	if !validID(userID) || !validID(tokenID) {
		return fmt.Errorf("token %q: %w", tokenID, ErrNotFound)
	}
	t, err := s.store.DeleteToken(ctx, userID, tokenID)
	if err != nil {
		return err
	}
	s.invalidate(ctx, tokenKey(t.Hash))
	s.emit(EventTokenRevoked, userID, tokenID)
	return nil
}

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
	hash, ok := ParseTokenSecret(secret)
	if !ok {
		return nil, fmt.Errorf("malformed token: %w", ErrUnauthenticated)
	}
	tok, err := s.cachedToken(ctx, hash)
	if err != nil {
		return nil, err
	}
	now := s.clock.Now()
	if tok.Expired(now) {
		return nil, fmt.Errorf("token expired: %w", ErrUnauthenticated)
	}
	u, err := s.cachedUser(ctx, tok.UserID)
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

func (s *Service) cachedToken(ctx context.Context, hash string) (*Token, error) {
	key := tokenKey(hash)
	if e, ok := s.cache.get(key); ok {
		return e.token, nil
	}
	gen := s.cache.begin()
	var tok *Token
	err := s.hot(ctx, func(ctx context.Context) (err error) {
		tok, err = s.store.GetTokenByHash(ctx, hash)
		return err
	})
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("unknown or revoked token: %w", ErrUnauthenticated)
	}
	if err != nil {
		return nil, err
	}
	s.cache.set(key, cacheEntry{gen: gen, token: tok})
	return tok, nil
}

func (s *Service) cachedUser(ctx context.Context, id string) (*User, error) {
	key := userKey(id)
	if e, ok := s.cache.get(key); ok {
		return e.user, nil
	}
	gen := s.cache.begin()
	var u *User
	err := s.hot(ctx, func(ctx context.Context) (err error) {
		u, err = s.store.GetUser(ctx, id)
		return err
	})
	if err != nil {
		return nil, err
	}
	s.cache.set(key, cacheEntry{gen: gen, user: u})
	return u, nil
}

// recordUse notes a token's use; the times are written in batches, at most
// about once a minute per token.
func (s *Service) recordUse(hash string, now time.Time) {
	s.touchMu.Lock()
	if last, ok := s.touchLast[hash]; !ok || now.Sub(last) >= time.Minute {
		s.touchLast[hash] = now
		s.touchPending[hash] = now.UTC().Truncate(time.Millisecond)
	}
	s.touchMu.Unlock()
}

func (s *Service) touchLoop() {
	defer close(s.done)
	tick := time.NewTicker(s.touchEvery)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			s.flushTouches()
		case <-s.stop:
			s.flushTouches()
			return
		}
	}
}

func (s *Service) flushTouches() {
	now := s.clock.Now()
	s.touchMu.Lock()
	pending := s.touchPending
	s.touchPending = map[string]time.Time{}
	for h, last := range s.touchLast {
		if now.Sub(last) >= time.Minute {
			delete(s.touchLast, h)
		}
	}
	s.touchMu.Unlock()
	if len(pending) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.store.TouchTokens(ctx, pending); err != nil {
		s.log.Warn("recording token last-used times", zap.Int("tokens", len(pending)), zap.Error(err))
	}
}

// Use is an amount of one resource that a request consumes.
type Use struct {
	Resource string
	Amount   int64
	// Key, if set, counts the use once per distinct key (see Charge.Key).
	Key string
	// Hold, if positive, marks the use as a reservation (see Charge.Hold).
	Hold time.Duration
}

// LimitState is one limit of a user as it stands after an admission.
type LimitState struct {
	Resource string
	Limit    Limit
	Used     int64
	// ResetsAt is the end of the window; zero for lifetime caps.
	ResetsAt time.Time
}

// Remaining is what is left of the limit.
func (l LimitState) Remaining() int64 {
	if r := l.Limit.Limit - l.Used; r > 0 {
		return r
	}
	return 0
}

// Decision is the outcome of Admit.
type Decision struct {
	Allowed bool
	Now     time.Time
	// Denied is the limit that refused the request (when !Allowed).
	Denied LimitState
	// Tightest is the limit with the least remaining after admission (nil
	// when no used resource has a limit).
	Tightest *LimitState
	// Pending is set when the store did not answer (the error matches
	// ErrUnavailable) and the request had an id: the admission may still
	// reach the store. The caller must settle it with Abandon or Force.
	Pending *Pending
}

// Pending is an admission whose outcome is unknown.
type Pending struct {
	userID, requestID string
	charges           []Charge
}

// Abandon settles a pending admission as refused: whatever it charged is
// taken back, and if it reaches the store later it charges nothing. The
// settlement is journaled and replayed until the store takes it.
func (s *Service) Abandon(p *Pending) { s.journal.add(resolution{p: *p, apply: false}) }

// Force settles a pending admission as served: its charges are counted
// exactly once, without limits, when the store takes the settlement.
func (s *Service) Force(p *Pending) { s.journal.add(resolution{p: *p, apply: true}) }

// LimitError is returned by Admit when a limit refuses the request; it
// matches ErrLimitExceeded.
type LimitError struct{ State LimitState }

// Error implements error.
func (e *LimitError) Error() string {
	return fmt.Sprintf("%s limit of %d (%s) reached", e.State.Resource, e.State.Limit.Limit, e.State.Limit.Per.String())
}

// Is reports whether target is ErrLimitExceeded.
func (e *LimitError) Is(target error) bool { return target == ErrLimitExceeded }

// Admit charges uses to a user's counters in one atomic store step: every
// use counts against its resource's lifetime counter and each of the user's
// windowed limits on that resource. Refused requests consume nothing.
// requestID (optional) makes the admission idempotent and lets a timed-out
// admission be settled exactly once; see Decision.Pending.
func (s *Service) Admit(ctx context.Context, u *User, requestID string, uses []Use) (*Decision, error) {
	charges, limits := s.expand(u, uses)
	var adm *Admission
	err := s.hot(ctx, func(ctx context.Context) (err error) {
		adm, err = s.store.Admit(ctx, u.ID, requestID, charges)
		return err
	})
	if errors.Is(err, ErrUnavailable) && requestID != "" {
		return &Decision{Pending: &Pending{userID: u.ID, requestID: requestID, charges: charges}}, err
	}
	if err != nil {
		return nil, err
	}
	d := &Decision{Allowed: adm.Allowed, Now: adm.Now}
	state := func(i int) LimitState {
		_, end := charges[i].Per.Window(adm.Now)
		return LimitState{Resource: charges[i].Resource, Limit: *limits[i], Used: adm.Used[i], ResetsAt: end}
	}
	if !adm.Allowed {
		d.Denied = state(adm.Denied)
		return d, &LimitError{State: d.Denied}
	}
	best := int64(math.MaxInt64)
	for i := range charges {
		if limits[i] == nil {
			continue
		}
		st := state(i)
		if r := st.Remaining(); r < best {
			best = r
			d.Tightest = &st
		}
	}
	return d, nil
}

// expand turns uses into charges: each use counts against its resource's
// lifetime counter and each of the user's windowed limits on it. limits[i]
// is the limit of charges[i], nil for an unlimited lifetime counter.
func (s *Service) expand(u *User, uses []Use) (charges []Charge, limits []*Limit) {
	charges = make([]Charge, 0, len(uses)*2)
	limits = make([]*Limit, 0, len(uses)*2)
	for _, use := range uses {
		ls := u.Limits[use.Resource]
		if use.Resource == ResourceCredits {
			// Spent credits count against what the user was granted.
			ls = []Limit{{Limit: u.Credits}}
		}
		life := Charge{Resource: use.Resource, Limit: NoLimit, Amount: use.Amount, Key: use.Key, Hold: use.Hold}
		var lifeLimit *Limit
		for i := range ls {
			if ls[i].Per == Lifetime {
				life.Limit = ls[i].Limit
				lifeLimit = &ls[i]
			}
		}
		charges = append(charges, life)
		limits = append(limits, lifeLimit)
		for i := range ls {
			if ls[i].Per != Lifetime {
				charges = append(charges, Charge{Resource: use.Resource, Per: ls[i].Per, Limit: ls[i].Limit, Amount: use.Amount, Key: use.Key, Hold: use.Hold})
				limits = append(limits, &ls[i])
			}
		}
	}
	return charges, limits
}

// charges is expand without the limits.
func (s *Service) charges(u *User, uses []Use) []Charge {
	c, _ := s.expand(u, uses)
	return c
}

// UsageItem reports one counter of a user.
type UsageItem struct {
	Resource string `json:"resource"`
	Per      string `json:"per"`
	Used     int64  `json:"used"`
	// Reserved is the part of Used that in-flight requests reserved and
	// have not settled yet (lifetime counters of token resources).
	Reserved  int64      `json:"reserved"`
	Limit     *int64     `json:"limit"`
	Remaining *int64     `json:"remaining"`
	ResetsAt  *time.Time `json:"resetsAt"`
}

// Usage is a user's usage of every limited or counted resource.
type Usage struct {
	UserID string    `json:"userId"`
	At     time.Time `json:"at"`
	// Credits is the prepaid balance left: granted minus spent.
	Credits int64       `json:"credits"`
	Items   []UsageItem `json:"items"`
}

// Usage reports a user's usage in the current window of every limit and of
// every counted resource.
func (s *Service) Usage(ctx context.Context, userID string) (*Usage, error) {
	u, err := s.GetUser(ctx, userID)
	if err != nil {
		return nil, err
	}
	snap, err := s.store.Usage(ctx, userID)
	if err != nil {
		return nil, err
	}
	out := &Usage{UserID: u.ID, At: snap.Now.UTC(), Credits: max(u.Credits-snap.Current(ResourceCredits, Lifetime), 0), Items: []UsageItem{}}
	seen := map[string]bool{}
	add := func(resource string, per Period, lim *int64) {
		key := CounterKey(resource, per)
		if seen[key] {
			return
		}
		seen[key] = true
		it := UsageItem{Resource: resource, Per: per.String(), Used: snap.Current(resource, per), Limit: lim}
		if lim != nil {
			r := max(*lim-it.Used, 0)
			it.Remaining = &r
		}
		if per != Lifetime {
			_, end := per.Window(snap.Now)
			it.ResetsAt = &end
		}
		out.Items = append(out.Items, it)
	}
	for name, ls := range u.Limits {
		for _, l := range ls {
			lim := l.Limit
			add(name, l.Per, &lim)
		}
	}
	if u.Credits > 0 || snap.Current(ResourceCredits, Lifetime) > 0 {
		granted := u.Credits
		add(ResourceCredits, Lifetime, &granted)
	}
	for _, c := range snap.Counters {
		if strings.HasPrefix(c.Resource, ReservedPrefix) {
			continue
		}
		if start, _ := c.Per.Window(snap.Now); c.Start.Equal(start) {
			add(c.Resource, c.Per, nil)
		}
	}
	for i := range out.Items {
		if it := &out.Items[i]; it.Per == Lifetime.String() {
			it.Reserved = snap.Current(ReservedPrefix+it.Resource, Lifetime)
		}
	}
	sort.Slice(out.Items, func(i, j int) bool {
		a, b := out.Items[i], out.Items[j]
		if a.Resource != b.Resource {
			return a.Resource < b.Resource
		}
		return periodOrder(a.Per) < periodOrder(b.Per)
	})
	return out, nil
}

func periodOrder(p string) int {
	switch Period(p) {
	case Minute:
		return 1
	case Hour:
		return 2
	case Day:
		return 3
	case Month:
		return 4
	}
	return 0
}

// ResetUsage zeroes a user's counters of the named resources (all if none)
// and returns the usage after the reset.
func (s *Service) ResetUsage(ctx context.Context, userID string, resources []string) (*Usage, error) {
	var v validator
	for i, r := range resources {
		if !ValidResourceName(r) {
			v.add(fmt.Sprintf("resources[%d]", i), "resource name must match %s", ResourceNamePattern)
		}
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	if _, err := s.GetUser(ctx, userID); err != nil {
		return nil, err
	}
	if err := s.store.ResetUsage(ctx, userID, resources); err != nil {
		return nil, err
	}
	s.emit(EventUsageReset, userID, "", resources...)
	return s.Usage(ctx, userID)
}

// validID filters ids before they reach a store key.
func validID(id string) bool {
	if id == "" || len(id) > MaxIDLength {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
