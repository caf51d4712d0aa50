package quota

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"time"
)

// Ticket is an admitted request (like x/time/rate's Reservation): it owns
// the request id and what the admission charged, and settles the request
// exactly once. Its methods are safe to call from any goroutine. An
// admission whose outcome is unknown is resolved once, by Force (served:
// it is then settled like any other) or Abandon (refused: nothing to
// settle); only the first End or SettleUses does anything.
type Ticket struct {
	// Now is the store's clock at admission.
	Now time.Time
	// Tightest is the limit with the least remaining after admission (nil
	// when no used resource has a limit).
	Tightest *LimitState

	s         *Service
	user      *User
	token     *Token
	requestID string
	plan      *Plan
	charges   []Charge
	holds     bool
	resolved  atomic.Bool // Force or Abandon
	settled   atomic.Bool
	// slice is set when the request was admitted from a headroom slice
	// (no store call: its request id is made when a settlement needs one).
	slice    *slice
	tightest LimitState
}

// Abandon settles an admission whose outcome is unknown (Admit failed
// with ErrUnavailable) as refused: whatever it charged is taken back, and
// if it reaches the store later it charges nothing. The settlement is
// journaled and replayed until the store takes it.
func (t *Ticket) Abandon() {
	t.settled.Store(true)
	if t.slice != nil {
		if t.resolved.CompareAndSwap(false, true) {
			t.s.allow.unadmit(t.slice)
		}
		return
	}
	if t.resolved.CompareAndSwap(false, true) {
		t.s.journal.add(resolution{p: t.pending(t.charges), apply: false})
	}
}

// Force settles an admission whose outcome is unknown as served: its
// charges are counted exactly once, without limits, when the store takes
// the settlement.
func (t *Ticket) Force() {
	if t.slice != nil {
		return // admitted and counted by its slice
	}
	if t.resolved.CompareAndSwap(false, true) {
		t.s.journal.add(resolution{p: t.pending(t.charges), apply: true})
	}
}

func (t *Ticket) pending(charges []Charge) Pending {
	return Pending{userID: t.user.ID, requestID: t.requestID, charges: charges}
}

// Holds reports whether the admission holds a reservation to release.
func (t *Ticket) Holds() bool { return t.holds }

// Plan returns the plan the ticket was admitted under (nil for AdmitUses).
func (t *Ticket) Plan() *Plan { return t.plan }

// End ends a request admitted with Admit, once its outcome is known: what
// its response shows it used (Plan.Settlement) replaces what the admission
// held. It returns what was settled (for metrics); an error means the
// settlement is journaled for replay.
func (t *Ticket) End(ctx context.Context, o Outcome) ([]Use, error) {
	var uses []Use
	if t.plan != nil {
		uses = t.plan.Settlement(o)
	}
	return uses, t.SettleUses(ctx, uses)
}

// SettleUses ends a served request exactly once: it counts what the
// request actually used, without checking limits (it has been served), and
// releases the reservation its admission holds. The settlement is
// journaled and replayed if the store does not take it now. A request
// that held nothing and used nothing costs no store call.
func (t *Ticket) SettleUses(ctx context.Context, actual []Use) error {
	if !t.settled.CompareAndSwap(false, true) {
		return nil
	}
	nonzero := make([]Use, 0, len(actual))
	for _, a := range actual {
		if a.Amount = clampSigned(a.Amount); a.Amount != 0 {
			nonzero = append(nonzero, a)
		}
	}
	if !t.holds && len(nonzero) == 0 {
		return nil
	}
	t.s.refused.forget(t.user.ID) // a released reservation may make room
	charges, _ := expand(t.user, t.token, nonzero)
	if t.requestID == "" {
		t.requestID = NewID()
	}
	// The limits go along (the store does not check them) for usage thresholds.
	p := t.pending(charges)
	err := t.s.hot(ctx, OpSettle, func(ctx context.Context) error {
		return t.s.store.Settle(ctx, p.userID, p.requestID, p.charges)
	})
	if err != nil {
		t.s.journal.add(resolution{p: p, settle: true})
	}
	return err
}

// LimitError is returned by Admit when a limit refuses the request; it
// matches ErrLimitExceeded.
type LimitError struct {
	State LimitState
	// Need is how much of State.Resource the request asked for (0 when
	// unknown).
	Need int64
	// Request describes what the request asked for, in the client's
	// terms ("a prompt of up to 12 tokens and max_tokens 2000"), when it
	// is an LLM request refused on a token or credit limit; Advice what
	// its client can change ("shorten the prompt").
	Request, Advice string
}

// Error implements error.
func (e *LimitError) Error() string {
	return fmt.Sprintf("%s limit of %d (%s) reached", e.State.Resource, e.State.Limit.Limit, e.State.Limit.Per.String())
}

// Is reports whether target is ErrLimitExceeded.
func (e *LimitError) Is(target error) bool { return target == ErrLimitExceeded }

// maxFits bounds how often Admit shrinks an output reservation to fit
// (each is one more store round trip, only for a tenant near its cap).
const maxFits = 3

// Admit admits a planned request in one atomic store step, or refuses it
// with a *LimitError, charging nothing. A request that set no output
// maximum and does not fit with the default one is admitted with the
// largest that fits (see Plan.OutputMax), if one token fits.
//
// When the store does not answer, the error matches ErrUnavailable and
// the ticket is still returned: the admission may yet reach the store,
// and the caller must end it with Force or Abandon.
func (s *Service) Admit(ctx context.Context, u *User, p *Plan) (*Ticket, error) {
	return s.AdmitToken(ctx, u, nil, p)
}

// AdmitToken is Admit for a request made with tok, which charges the
// token's own limits too (nil: the user's alone).
func (s *Service) AdmitToken(ctx context.Context, u *User, tok *Token, p *Plan) (*Ticket, error) {
	return s.admitToken(ctx, u, tok, p, nil, time.Time{})
}

// AdmitPrincipal is AdmitToken for an authenticated request: the
// principal remembers where this node keeps its user's slices (no lookup
// per request). now is the request's time from Now, read once for
// AuthenticateAt and this (a clock read costs about 0.1 µs on some VMs),
// so it must be fresh: zero makes it read the clock.
func (s *Service) AdmitPrincipal(ctx context.Context, pr *Principal, p *Plan, now time.Time) (*Ticket, error) {
	if _, system := s.clock.(SystemClock); !system {
		now = time.Time{} // slices run on the system clock
	}
	return s.admitToken(ctx, pr.User, pr.Token, p, &pr.slices, now)
}

func (s *Service) admitToken(ctx context.Context, u *User, tok *Token, p *Plan, hint *atomic.Pointer[userSlices], now time.Time) (*Ticket, error) {
	at := now
	if at.IsZero() {
		at = s.clock.Now()
	}
	le, probe := s.refused.lookup(u, tok, p.Uses(), at)
	if le != nil {
		return nil, le
	}
	if probe != nil {
		// Whatever ends this admission (an admission, a store error, a
		// panic) ends the refusal, unless a new refusal was noted.
		defer s.refused.probed(u.ID, probe)
	}
	for fits := 0; ; fits++ {
		var t *Ticket
		var err error
		if uses := p.Uses(); s.allow != nil && sliceable(uses) {
			t, err = s.allow.admit(ctx, u, tok, uses, p, hint, now)
		} else {
			t, err = s.admitHeld(ctx, u, tok, uses, p)
		}
		if err == nil {
			return t, nil
		}
		var le *LimitError
		if !errors.As(err, &le) {
			return t, err
		}
		if fits < maxFits && p.fit(le.State.Resource, le.State.Remaining()) {
			continue
		}
		le.Need, le.Request = p.minNeed(le.State.Resource), p.describe(le.State.Resource)
		if le.Request != "" {
			le.Advice = p.advice()
		}
		s.refused.note(u, tok, le, at)
		return t, err
	}
}

// AdmitUses admits uses that no plan describes (an operator's own
// charges): every use counts against its resource's lifetime counter and
// each of the user's windowed limits on that resource.
func (s *Service) AdmitUses(ctx context.Context, u *User, uses []Use) (*Ticket, error) {
	return s.admitHeld(ctx, u, nil, uses, nil)
}

// admitHeld admits at the store uses that no slice may hold; refused while
// this node holds slices of the user, it gives them back and tries again,
// so that one node is exactly a single counter.
func (s *Service) admitHeld(ctx context.Context, u *User, tok *Token, uses []Use, p *Plan) (*Ticket, error) {
	t, err := s.admit(ctx, u, tok, uses, p)
	if err != nil && s.allow != nil && errors.Is(err, ErrLimitExceeded) && s.allow.holds(u.ID) {
		s.allow.returnUser(ctx, u.ID, true)
		t, err = s.admit(ctx, u, tok, uses, p)
	}
	return t, err
}

func (s *Service) admit(ctx context.Context, u *User, tok *Token, uses []Use, p *Plan) (*Ticket, error) {
	t, _, err := s.admitRaw(ctx, u, tok, uses, p)
	return t, err
}

// admitRaw is admit that also returns the store's admission (nil when the
// store did not answer).
func (s *Service) admitRaw(ctx context.Context, u *User, tok *Token, uses []Use, p *Plan) (*Ticket, *Admission, error) {
	for i := range uses {
		uses[i].Amount = clampSigned(uses[i].Amount)
	}
	charges, limits := expand(u, tok, uses)
	// The request id is ours, never the client's, and new for every
	// attempt: a client that could pick it could replay an admitted id.
	t := &Ticket{s: s, user: u, token: tok, requestID: NewID(), plan: p, charges: charges}
	for _, c := range charges {
		t.holds = t.holds || c.Hold > 0
	}
	var adm *Admission
	err := s.hot(ctx, OpAdmit, func(ctx context.Context) (err error) {
		adm, err = s.store.Admit(ctx, u.ID, t.requestID, charges)
		return err
	})
	if errors.Is(err, ErrUnavailable) {
		return t, nil, err
	}
	if err != nil {
		return nil, nil, err
	}
	t.Now = adm.Now
	state := func(i int) LimitState {
		_, end := charges[i].Per.Window(adm.Now)
		st := LimitState{Resource: charges[i].Resource, Limit: *limits[i], Used: adm.Used[i], ResetsAt: end}
		if id, r, ok := SplitTokenResource(st.Resource); ok {
			st.Token, st.Resource = id, r
		}
		return st
	}
	if !adm.Allowed {
		return nil, adm, &LimitError{State: state(adm.Denied)}
	}
	best := int64(math.MaxInt64)
	for i := range charges {
		if limits[i] == nil {
			continue
		}
		st := state(i)
		if r := st.Remaining(); r < best {
			best = r
			t.Tightest = &st
		}
	}
	return t, adm, nil
}

// periodCharges appends the charges of use on the counters of resource
// under ls: its lifetime counter (limited by a lifetime limit in ls, if
// any) and one per windowed limit; limits gets each charge's limit (nil
// for an unlimited lifetime counter).
func periodCharges(resource string, ls []Limit, use Use, charges []Charge, limits []*Limit) ([]Charge, []*Limit) {
	life := Charge{Resource: resource, Limit: NoLimit, Amount: use.Amount, Key: use.Key, Hold: use.Hold, Keep: use.Keep}
	var lifeLimit *Limit
	for i := range ls {
		if ls[i].Per == Lifetime {
			life.Limit, lifeLimit = ls[i].Limit, &ls[i]
		}
	}
	charges = append(charges, life)
	limits = append(limits, lifeLimit)
	for i := range ls {
		if ls[i].Per != Lifetime {
			charges = append(charges, Charge{Resource: resource, Per: ls[i].Per, Limit: ls[i].Limit, Amount: use.Amount, Key: use.Key, Hold: use.Hold, Keep: use.Keep})
			limits = append(limits, &ls[i])
		}
	}
	return charges, limits
}

// expand turns uses into charges: each use counts against its resource's
// lifetime counter and each of the user's windowed limits on it. limits[i]
// is the limit of charges[i], nil for an unlimited lifetime counter.
func expand(u *User, tok *Token, uses []Use) (charges []Charge, limits []*Limit) {
	charges = make([]Charge, 0, len(uses)*2)
	limits = make([]*Limit, 0, len(uses)*2)
	for _, use := range uses {
		ls := u.Limits[use.Resource]
		if use.Resource == ResourceCredits {
			// Spent credits count against what the user was granted.
			ls = []Limit{{Limit: u.Credits}}
		}
		charges, limits = periodCharges(use.Resource, ls, use, charges, limits)
		charges, limits = tokenCharges(tok, use, charges, limits)
	}
	return charges, limits
}
