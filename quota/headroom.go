package quota

import (
	"context"
	"errors"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Headroom slices (this file is the whole of them: allowances, with
// headroomDeps for what they need of the service). Far from every cap, a node takes a slice of a user's
// headroom from the store in one admission: k requests' worth of the
// request's charges, held like an LLM request's reservation (so the store
// counts it against every cap at once, and releases it by itself if the
// node dies). The node then admits the next requests with the same
// charges from the slice in memory, with no store call, and settles the
// slice (what it admitted replaces what it held) when the slice is used
// up, idle, a second old, or its window is about to end.
//
// Why it never over-admits: a slice is admitted by the store like any
// request, all or nothing against every limit, before anything is
// admitted from it; a node admits from a slice at most k requests, each
// with exactly the charges the slice was taken for (same user object,
// token and uses; a changed limit loads a new user object, which no slice
// matches). So what every node admits is never more than what the store
// has counted.
//
// When it may refuse what a single counter would admit: while another
// node holds a slice it has not used up. A slice is at most 1/64 of what
// remained when it was taken (so none is taken within 512 requests of a
// cap) and lives at most a second; and a refusal while slices are
// outstanding recalls them (other nodes return theirs at once through the
// Broadcaster) and retries for up to about 60 ms. A node returns its own
// slices before a store admission can refuse, so one node alone is exact.
//
// What ends a slice: it is used up; idle for sliceIdle; sliceMaxAge old;
// within sliceMargin of the end of a window of its charges (the sweeper,
// every sliceSweep); a usage read or reset of its user on this node (so
// the store answers exactly); a change of the user (a new object, and the
// cache invalidation that announces it on every node); a recall from
// another node that was refused while slices were out; the service
// closing. Each ends in one settlement of what the slice admitted; a node
// that dies leaves its slices to the store, which keeps them counted
// (Charge.Keep) when their hold of sliceHold ends.
//
// Slices are for busy tenants: one needs at least minSliceUnits requests
// in sliceTarget on one node (about 20 a second), which the slice is
// sized to last. Only requests whose uses are plain counts take slices: no reservation
// (every LLM request holds one), no distinct key, no negative amount.

const (
	sliceDivisor  = 64
	minSliceUnits = 8
	maxSliceUnits = 4096
	sliceMaxAge   = time.Second
	// sliceTarget is how long a slice should last at the user's rate: a
	// user who sends fewer than minSliceUnits requests in it takes none
	// (a store round trip per request costs such a user nothing).
	sliceTarget = 400 * time.Millisecond
	sliceIdle   = 200 * time.Millisecond
	// sliceHold is how long the store holds a slice of a node that never
	// returns it (it died).
	sliceHold = 10 * time.Second
	// sliceMargin: a slice is returned this long before a window of its
	// charges ends (the returner looks every sliceSweep).
	sliceMargin    = 300 * time.Millisecond
	sliceSweep     = 100 * time.Millisecond
	maxUserSlices  = 4
	sliceUserIdle  = 10 * time.Second
	recallAttempts = 5
	// sliceCalm is how long a user refused or recalled takes no slice.
	sliceCalm      = time.Second
	recallFirstGap = 2 * time.Millisecond
)

// resourceSlices counts a user's outstanding slices, on every node: each
// slice holds one, and every store admission of this path reads it.
const resourceSlices = ReservedPrefix + "slices"

// recallPrefix starts the Broadcaster key that asks every node to return
// its slices of a user.
const recallPrefix = "r:"

type allowances struct {
	headroomDeps
	users sync.Map // user id → *userSlices; read without a lock on every request
	// closed is set when the service closes: no slice is taken from then
	// on (none would be given back).
	closed atomic.Bool
}

// headroomDeps is what headroom needs from the service, and nothing more.
type headroomDeps struct {
	// owner stamps the tickets admitted from slices (they settle through
	// it like any other).
	owner *Service
	// admitStore is one store admission of uses for u (and tok), all or
	// nothing.
	admitStore func(ctx context.Context, u *User, tok *Token, uses []Use, p *Plan) (*Ticket, *Admission, error)
	// publish asks every node to return a user's slices; nil when there
	// is no Broadcaster (a single node).
	publish func(ctx context.Context, keys []string) error
	// settle settles a slice given back, or journals it for replay.
	settle func(ctx context.Context, p Pending)
	// clock measures slices' ages and idleness. It must move with the
	// store's clock (a slice's window end is the store's time plus the
	// time since it answered): the system clock.
	clock Clock
}

// newAllowances is the headroom of s, whose broadcaster (if any) is set.
func newAllowances(s *Service) *allowances {
	deps := headroomDeps{owner: s, admitStore: s.admitRaw, clock: SystemClock{},
		settle: func(ctx context.Context, p Pending) {
			err := s.hot(context.WithoutCancel(ctx), OpSettle, func(ctx context.Context) error {
				return s.store.Settle(ctx, p.userID, p.requestID, p.charges)
			})
			if err != nil {
				s.journal.add(resolution{p: p, settle: true})
			}
		}}
	if b := s.broadcaster; b != nil {
		deps.publish = b.Publish
	}
	return &allowances{headroomDeps: deps}
}

// lookup returns the user's slices, nil if this node has none.
func (a *allowances) lookup(id string) *userSlices {
	if v, ok := a.users.Load(id); ok {
		return v.(*userSlices)
	}
	return nil
}

// userSlices are one user's slices on this node. mu is held across the
// store calls that take and return them, so that a node always returns
// its own slices before an admission that could be refused.
type userSlices struct {
	of     *allowances // whose (a principal's hint may come from another Service)
	mu     sync.Mutex
	dead   bool // removed from allowances.users: look it up again
	slices []*slice
	// live is a copy of slices for admissions that take no lock; written
	// under mu whenever slices changes.
	live    atomic.Pointer[[]*slice]
	touched time.Time
	// remaining is how many more requests of sig fitted after the last
	// store admission of one (-1: unknown); it sizes the next slice.
	sig       signature
	remaining int64
	// gap is the average time between this user's requests on this node
	// (a moving average): a slice is sized to last about sliceTarget.
	gap  time.Duration
	last time.Time
	// calm: no slice is taken before then (set by a refusal or a recall:
	// the user is at a cap, where only a single counter is exact).
	calm time.Time
}

// signature is what a slice was taken for: its charges follow from it.
type signature struct {
	user *User
	tok  *Token
	uses []Use
}

func (g *signature) matches(u *User, tok *Token, uses []Use) bool {
	return g.user == u && g.tok == tok && slices.Equal(g.uses, uses)
}

type slice struct {
	signature
	owner   *userSlices
	charges []Charge // one request's
	limits  []*Limit
	rid     string
	units   int64 // requests the slice holds
	// used counts the requests admitted from it (past units when it ran
	// out: a request that finds it so is not admitted from it), and is
	// closedMark from when it is given back.
	used    atomic.Int64
	base    []int64
	granted time.Time // the store's clock
	local   time.Time // when it was granted, on this node's clock
	offset  time.Duration
	ends    time.Time    // local clock: admit nothing from it from then on
	lastUse atomic.Int64 // unix ns, local clock
}

// closedMark is a given-back slice's used: no admission fits under it.
const closedMark = math.MaxInt64 / 2

// take admits one request from the slice at now, if it can: it returns
// the requests admitted from it so far, this one included.
func (sl *slice) take(now time.Time) (int64, bool) {
	if !now.Before(sl.ends) {
		return 0, false
	}
	n := sl.used.Add(1)
	if n > sl.units {
		return 0, false
	}
	sl.lastUse.Store(now.UnixNano())
	return n, true
}

// publish makes the slices visible to admissions that take no lock. The
// caller holds us.mu.
func (us *userSlices) publish() {
	live := slices.Clone(us.slices)
	us.live.Store(&live)
}

// sliceable reports whether uses may be admitted from a slice.
func sliceable(uses []Use) bool {
	if len(uses) == 0 {
		return false
	}
	for _, u := range uses {
		if u.Amount < 0 || u.Key != "" || u.Hold != 0 || strings.HasPrefix(u.Resource, ReservedPrefix) {
			return false
		}
	}
	return true
}

func (a *allowances) user(id string) *userSlices {
	if us := a.lookup(id); us != nil {
		return us
	}
	v, _ := a.users.LoadOrStore(id, &userSlices{of: a, remaining: -1, gap: time.Second})
	return v.(*userSlices)
}

// admit admits one request of sliceable uses: from a slice when this node
// holds one for them, else at the store (taking a slice when far from
// every cap).
//
// now is this node's clock if the caller has just read it (zero: read it
// here).
func (a *allowances) admit(ctx context.Context, u *User, tok *Token, uses []Use, p *Plan, hint *atomic.Pointer[userSlices], now time.Time) (*Ticket, error) {
	// The common case takes no lock: a slice with room for these uses. The
	// hint, if any, saves the lookup (a state given up since has no live
	// slices: the locked path below finds the current one).
	var us *userSlices
	if hint != nil {
		us = hint.Load()
	}
	if us == nil || us.of != a {
		us = a.lookup(u.ID)
	}
	if us != nil {
		if live := us.live.Load(); live != nil {
			if now.IsZero() {
				now = a.clock.Now()
			}
			for _, sl := range *live {
				if sl.matches(u, tok, uses) {
					if n, ok := sl.take(now); ok {
						return sl.ticket(a.owner, p, now, n), nil
					}
				}
			}
		}
	}
	for {
		us := a.user(u.ID)
		us.mu.Lock()
		if us.dead {
			us.mu.Unlock()
			continue
		}
		if hint != nil && hint.Load() != us {
			hint.Store(us)
		}
		t, err := a.admitLocked(ctx, us, u, tok, uses, p)
		us.mu.Unlock()
		return t, err
	}
}

func (a *allowances) admitLocked(ctx context.Context, us *userSlices, u *User, tok *Token, uses []Use, p *Plan) (*Ticket, error) {
	now := a.clock.Now()
	us.touched = now
	if !us.last.IsZero() {
		us.gap = (3*us.gap + now.Sub(us.last)) / 4
	}
	us.last = now
	for i, sl := range us.slices {
		if !sl.matches(u, tok, uses) {
			continue
		}
		if n, ok := sl.take(now); ok {
			return sl.ticket(a.owner, p, now, n), nil
		}
		if sl.used.Load() >= sl.units && sl.units > 0 {
			// Used up: its pace is the user's rate (the requests it served
			// never came here).
			us.gap = now.Sub(sl.local) / time.Duration(sl.units)
		}
		a.giveBack(ctx, us, i)
		break
	}
	if us.sig.matches(u, tok, uses) && now.After(us.calm) && !a.closed.Load() {
		if k := min(sliceUnits(us.remaining), int64(sliceTarget/max(us.gap, time.Microsecond))); k >= minSliceUnits {
			if t, err, done := a.grant(ctx, us, u, tok, uses, p, k); done {
				return t, err
			}
		}
	}
	return a.admitOne(ctx, us, u, tok, uses, p)
}

// sliceUnits is the size of the next slice given how many requests
// remain: a 64th of them, at most maxSliceUnits.
func sliceUnits(remaining int64) int64 {
	if remaining < 0 {
		return 0
	}
	return min(remaining/sliceDivisor, maxSliceUnits)
}

// unitsLeft is how many more requests of unit charges fit, given the
// counters as used reports them.
func unitsLeft(charges []Charge, used []int64) int64 {
	left := int64(math.MaxInt64)
	for i, c := range charges {
		if c.Limit < 0 || c.Amount <= 0 {
			continue
		}
		left = min(left, max(c.Limit-used[i], 0)/c.Amount)
	}
	return left
}

// grant takes a slice of k requests and admits this request from it.
// done is false when no slice fits: the request then goes alone.
func (a *allowances) grant(ctx context.Context, us *userSlices, u *User, tok *Token, uses []Use, p *Plan, k int64) (t *Ticket, err error, done bool) {
	held := make([]Use, 0, 2*len(uses)+1)
	held = append(held, Use{Resource: resourceSlices, Amount: 1, Hold: sliceHold})
	for _, use := range uses {
		n := satMul(use.Amount, k)
		// Kept if never given back: what the node admitted from it stays
		// counted (the count of slices and the marker are released).
		held = append(held, Use{Resource: use.Resource, Amount: n, Hold: sliceHold, Keep: true},
			Use{Resource: ReservedPrefix + use.Resource, Amount: n, Hold: sliceHold})
	}
	lt, adm, err := a.admitStore(ctx, u, tok, held, nil)
	switch {
	case errors.Is(err, ErrUnavailable):
		// The slice may yet land: it is taken back when the store is back.
		// This request's own outcome is unknown as well.
		lt.Abandon()
		unit, _ := expand(u, tok, uses)
		return &Ticket{s: a.owner, user: u, token: tok, requestID: NewID(), plan: p, charges: unit}, err, true
	case err != nil:
		return nil, nil, false
	}
	local := a.clock.Now()
	unit, limits := expand(u, tok, uses)
	sl := &slice{signature: signature{u, tok, slices.Clone(uses)}, owner: us, charges: unit, limits: limits, rid: lt.requestID,
		units: k, granted: adm.Now, local: local, offset: adm.Now.Sub(local)}
	sl.used.Store(1)
	sl.lastUse.Store(local.UnixNano())
	// The store's counters of this request's charges: the held charges in
	// the same order, less the markers.
	sl.base = make([]int64, 0, len(unit))
	for i, c := range lt.charges {
		if !strings.HasPrefix(c.Resource, ReservedPrefix) {
			sl.base = append(sl.base, adm.Used[i])
		}
	}
	sl.ends = local.Add(sliceMaxAge)
	for _, c := range unit {
		if c.Per != Lifetime {
			_, end := c.Per.Window(adm.Now)
			if e := end.Add(-sl.offset - sliceMargin); e.Before(sl.ends) {
				sl.ends = e
			}
		}
	}
	us.remaining = unitsLeft(unit, sl.base)
	us.slices = append(us.slices, sl)
	if len(us.slices) > maxUserSlices {
		a.giveBack(ctx, us, 0)
	}
	us.publish()
	return sl.ticket(a.owner, p, local, 1), nil, true
}

// admitOne admits the request alone at the store. Refused, it first
// returns this node's slices of the user, then recalls the other nodes'.
func (a *allowances) admitOne(ctx context.Context, us *userSlices, u *User, tok *Token, uses []Use, p *Plan) (*Ticket, error) {
	// The marker, first so that a refusal still reads it, counts the
	// user's outstanding slices.
	marked := make([]Use, 0, len(uses)+1)
	marked = append(append(marked, Use{Resource: resourceSlices}), uses...)
	recalled, gap := false, recallFirstGap
	for attempt := 0; ; attempt++ {
		t, adm, err := a.admitStore(ctx, u, tok, marked, p)
		if adm == nil {
			return t, err
		}
		if err == nil {
			us.sig = signature{u, tok, slices.Clone(uses)}
			us.remaining = unitsLeft(t.charges[1:], adm.Used[1:])
			return t, nil
		}
		us.remaining, us.calm = -1, a.clock.Now().Add(sliceCalm)
		switch {
		case len(us.slices) > 0:
			for len(us.slices) > 0 {
				a.giveBack(ctx, us, len(us.slices)-1)
			}
			continue
		case adm.Used[0] == 0 || a.publish == nil || attempt >= recallAttempts:
			return t, err
		case !recalled:
			recalled = true
			if perr := a.publish(ctx, []string{recallPrefix + u.ID}); perr != nil {
				return t, err
			}
		}
		select {
		case <-ctx.Done():
			return t, err
		case <-time.After(gap):
		}
		gap *= 2
	}
}

// ticket is a request admitted from the slice at local time now, the n-th
// admitted from it.
func (sl *slice) ticket(s *Service, p *Plan, now time.Time, n int64) *Ticket {
	var t *Ticket
	if p != nil && !p.ticketUsed {
		p.ticketUsed, t = true, &p.ticket
	} else {
		t = new(Ticket)
	}
	*t = Ticket{s: s, user: sl.user, token: sl.tok, plan: p, charges: sl.charges, slice: sl, Now: now.Add(sl.offset)}
	best := int64(math.MaxInt64)
	for i, c := range sl.charges {
		if sl.limits[i] == nil {
			continue
		}
		// The store counted the whole slice; what it has not admitted yet
		// is still free.
		used := max(sl.base[i]-satMul(sl.units-n, c.Amount), 0)
		if r := sl.limits[i].Limit - used; r < best {
			best = r
			t.tightest = LimitState{Resource: c.Resource, Limit: *sl.limits[i], Used: used}
			t.Tightest = &t.tightest
		}
	}
	if st := t.Tightest; st != nil {
		if st.Limit.Per != Lifetime {
			_, st.ResetsAt = st.Limit.Per.Window(t.Now)
		}
		if id, r, ok := SplitTokenResource(st.Resource); ok {
			st.Token, st.Resource = id, r
		}
	}
	return t
}

// unadmit takes back a request admitted from sl (Ticket.Abandon). Once
// the slice is given back (or ran out and was tried again) the request
// stays counted: over, never under.
func (a *allowances) unadmit(sl *slice) {
	for {
		n := sl.used.Load()
		if n <= 0 || n > sl.units || sl.used.CompareAndSwap(n, n-1) {
			return
		}
	}
}

// giveBack returns the user's i-th slice to the store: what it admitted
// replaces what it held. The caller holds us.mu.
func (a *allowances) giveBack(ctx context.Context, us *userSlices, i int) {
	sl := us.slices[i]
	us.slices = slices.Delete(us.slices, i, i+1)
	us.publish()
	used := min(sl.used.Swap(closedMark), sl.units) // no admission from it after this
	if last := time.Unix(0, sl.lastUse.Load()); last.After(us.touched) {
		us.touched = last
	}
	actual := make([]Use, len(sl.uses))
	for j, use := range sl.uses {
		actual[j] = Use{Resource: use.Resource, Amount: satMul(use.Amount, used)}
	}
	charges, _ := expand(sl.user, sl.tok, actual)
	// A window that has ended keeps the whole slice (the store releases a
	// slice only from the window it was taken in): count nothing more.
	now := a.clock.Now().Add(sl.offset)
	kept := charges[:0]
	for _, c := range charges {
		if c.Per != Lifetime {
			if _, end := c.Per.Window(sl.granted); !now.Before(end) {
				continue
			}
		}
		kept = append(kept, c)
	}
	p := Pending{userID: sl.user.ID, requestID: sl.rid, charges: kept}
	a.settle(ctx, p)
}

// returnUser returns this node's slices of a user (before its usage is
// read or reset, when another node recalls them: then, with calm, it takes
// none for a while).
func (a *allowances) returnUser(ctx context.Context, userID string, calm bool) {
	us := a.lookup(userID)
	if us == nil {
		return
	}
	us.mu.Lock()
	defer us.mu.Unlock()
	if calm {
		us.calm = a.clock.Now().Add(sliceCalm)
	}
	for len(us.slices) > 0 {
		a.giveBack(ctx, us, len(us.slices)-1)
	}
}

// holds reports whether this node holds slices of a user.
func (a *allowances) holds(userID string) bool {
	us := a.lookup(userID)
	if us == nil {
		return false
	}
	us.mu.Lock()
	defer us.mu.Unlock()
	return len(us.slices) > 0
}

// recalled handles Broadcaster keys: a recall, or a changed user (its
// limits may have changed), returns the user's slices.
func (a *allowances) recalled(keys []string) {
	for _, k := range keys {
		if id, ok := strings.CutPrefix(k, recallPrefix); ok {
			go a.returnUser(context.Background(), id, true)
		} else if id, ok := strings.CutPrefix(k, userKeyPrefix); ok {
			go a.returnUser(context.Background(), id, false)
		}
	}
}

// returnSlices returns this node's slices of a user, so that what the
// store reads or resets next is exact for this node.
func (s *Service) returnSlices(ctx context.Context, userID string) {
	if s.allow != nil {
		s.allow.returnUser(ctx, userID, false)
	}
}

// sweep returns the slices that are idle, too old or near the end of a
// window (all of them with all), and forgets users idle for long.
func (a *allowances) sweep(now time.Time, all bool) {
	ctx := context.Background()
	a.users.Range(func(k, v any) bool {
		a.sweepUser(ctx, k.(string), v.(*userSlices), now, all)
		return true
	})
}

func (a *allowances) sweepUser(ctx context.Context, id string, us *userSlices, now time.Time, all bool) {
	us.mu.Lock()
	defer us.mu.Unlock()
	for i := len(us.slices) - 1; i >= 0; i-- {
		sl := us.slices[i]
		if all || !now.Before(sl.ends) || now.UnixNano()-sl.lastUse.Load() >= int64(sliceIdle) {
			a.giveBack(ctx, us, i)
		}
	}
	if len(us.slices) == 0 && (all || now.Sub(us.touched) >= sliceUserIdle) {
		us.dead = true
		a.users.CompareAndDelete(id, us)
	}
}

func (a *allowances) run(stop <-chan struct{}) {
	tick := time.NewTicker(sliceSweep)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-tick.C:
			a.sweep(now, false)
		}
	}
}
