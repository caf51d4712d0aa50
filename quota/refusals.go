package quota

import (
	"sync"
	"time"
)

// refusalTTL bounds how long a refusal is answered from memory: what can
// change the answer without this node hearing of it (another node's
// settlement releasing a reservation, a reset elsewhere without pub/sub)
// shows within it.
const refusalTTL = 250 * time.Millisecond

// refusals remembers, per user, a limit that is full (nothing remains):
// every request that charges its resource is refused from memory, with
// no store call, until the window ends, refusalTTL passes, or something
// that can change the answer happens on this node or is published (a
// changed user, a reset, a settlement of the user's). So a tenant
// hammering at its cap costs the store a few scripts a second, not one
// per request, and cannot push other tenants into 503s. Refusing is always
// safe for caps: at worst a request is refused for up to refusalTTL that a
// single counter would have admitted. It is safe for concurrent use; its
// memory is one entry per user refused lately.
type refusals struct {
	m sync.Map // user id → *refusal
}

type refusal struct {
	user  *User  // the user object refused: a changed user is a new object
	tok   *Token // the token, when the full limit is the token's own
	until time.Time
	err   *LimitError
}

// note remembers le, when its limit is full, for user u until the window
// ends or refusalTTL passes from now.
func (r *refusals) note(u *User, tok *Token, le *LimitError, now time.Time) {
	if le.State.Remaining() > 0 {
		return // a smaller request may fit
	}
	until := now.Add(refusalTTL)
	if end := le.State.ResetsAt; !end.IsZero() && end.Before(until) {
		until = end
	}
	// What the first request asked for is not what the next ones ask.
	general := &LimitError{State: le.State}
	f := &refusal{user: u, until: until, err: general}
	if le.State.Token != "" {
		f.tok = tok
	}
	r.m.Store(u.ID, f)
}

// lookup returns the remembered refusal of a request of u with uses, or
// nil.
func (r *refusals) lookup(u *User, tok *Token, uses []Use, now time.Time) *LimitError {
	v, ok := r.m.Load(u.ID)
	if !ok {
		return nil
	}
	f := v.(*refusal)
	if f.user != u || (f.tok != nil && f.tok != tok) || !now.Before(f.until) {
		if !now.Before(f.until) {
			r.m.CompareAndDelete(u.ID, v)
		}
		return nil
	}
	for _, use := range uses {
		// A distinct key may be counted already, which charges nothing.
		if use.Resource == f.err.State.Resource && use.Amount > 0 && use.Key == "" {
			return f.err
		}
	}
	return nil
}

// forget drops the user's remembered refusal.
func (r *refusals) forget(userID string) { r.m.Delete(userID) }
