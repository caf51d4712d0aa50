package quota

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"
)

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
