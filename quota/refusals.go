package quota

import (
	"sync"
	"sync/atomic"
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
//
// When refusalTTL passes, one request (the probe) asks the store again
// while the others are still refused from memory, so a tenant on many
// connections costs one script per refusalTTL, not one per connection. A
// probe that is admitted or fails ends the refusal (probed); a probe
// refused again notes a new one; a probe that never reports (a panic, a
// hang) is replaced after probeHold. The end of the window is not
// probed: the refusal ends for everyone then.
type refusals struct {
	m sync.Map // user id → *refusal
}

type refusal struct {
	user  *User     // the user object refused: a changed user is a new object
	tok   *Token    // the token, when the full limit is the token's own
	until time.Time // refusalTTL from the refusal, or the window's end
	end   time.Time // the window's end (zero: none)
	err   *LimitError
	probe atomic.Int64 // unix nanoseconds until which a probe is out
}

// probeHold bounds how long one probe holds the others off the store.
const probeHold = time.Second

// note remembers le, when its limit is full, for user u until the window
// ends or refusalTTL passes from now.
func (r *refusals) note(u *User, tok *Token, le *LimitError, now time.Time) {
	if le.State.Remaining() > 0 {
		r.m.Delete(u.ID) // a smaller request may fit; a probe reports here
		return
	}
	until, end := now.Add(refusalTTL), le.State.ResetsAt
	if !end.IsZero() && end.Before(until) {
		until = end
	}
	// What the first request asked for is not what the next ones ask.
	general := &LimitError{State: le.State}
	f := &refusal{user: u, until: until, end: end, err: general}
	if le.State.Token != "" {
		f.tok = tok
	}
	r.m.Store(u.ID, f)
}

// lookup returns the remembered refusal of a request of u with uses, or
// nil. A non-nil probe means this request is the one that asks the store
// again: it must report with probed once it has the store's answer.
func (r *refusals) lookup(u *User, tok *Token, uses []Use, now time.Time) (le *LimitError, probe *refusal) {
	v, ok := r.m.Load(u.ID)
	if !ok {
		return nil, nil
	}
	f := v.(*refusal)
	if f.user != u || (f.tok != nil && f.tok != tok) {
		return nil, nil
	}
	if !f.end.IsZero() && !now.Before(f.end) {
		r.m.CompareAndDelete(u.ID, v) // a new window
		return nil, nil
	}
	charged := false
	for _, use := range uses {
		// A distinct key may be counted already, which charges nothing.
		if use.Resource == f.err.State.Resource && use.Amount > 0 && use.Key == "" {
			charged = true
			break
		}
	}
	if !charged {
		return nil, nil
	}
	if now.Before(f.until) {
		return f.err, nil
	}
	held := f.probe.Load()
	if now.UnixNano() < held || !f.probe.CompareAndSwap(held, now.Add(probeHold).UnixNano()) {
		return f.err, nil // another request is asking the store
	}
	return nil, f
}

// probed reports the end of a probe that was not refused again (admitted,
// or the store failed): the refusal ends, unless a newer one replaced it.
func (r *refusals) probed(userID string, f *refusal) {
	if f != nil {
		r.m.CompareAndDelete(userID, f)
	}
}

// forget drops the user's remembered refusal.
func (r *refusals) forget(userID string) { r.m.Delete(userID) }
