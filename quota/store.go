package quota

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Store persists users, tokens and usage counters. Implementations must be
// safe for concurrent use and must pass the conformance suite in package
// storetest.
//
// Errors: ErrNotFound for unknown ids, ErrConflict for a taken email or
// external id; anything else is an infrastructure failure.
//
// Every method that changes an account takes the events that report the
// change and writes them to the store's outbox (EventLog) in the same
// atomic step as the change: the change and its events land together or
// not at all.
type Store interface {
	EventLog

	// CreateUser stores a new user; email and external id must be unique.
	CreateUser(ctx context.Context, u *User, events ...Event) error
	// GetUser returns the user with that id.
	GetUser(ctx context.Context, id string) (*User, error)
	// GetUserByEmail looks a user up by normalized email.
	GetUserByEmail(ctx context.Context, email string) (*User, error)
	// GetUserByExternalID looks a user up by external id.
	GetUserByExternalID(ctx context.Context, externalID string) (*User, error)
	// UpdateUser replaces the stored user that has u.ID, keeping the email
	// and external id indexes unique, only if the stored user's Revision
	// is u.Revision-1 (else ErrStale): a compare-and-swap, atomic with the
	// write.
	UpdateUser(ctx context.Context, u *User, events ...Event) error
	// DeleteUser removes the user, all of its tokens and all its counters.
	DeleteUser(ctx context.Context, id string, events ...Event) error
	// ListUsers returns up to take users with ids greater than after, in
	// id order, and whether more follow.
	ListUsers(ctx context.Context, after string, take int) (users []*User, more bool, err error)

	// CreateToken stores a token of an existing user.
	CreateToken(ctx context.Context, t *Token, events ...Event) error
	// GetTokenByHash returns the token whose secret hashes to hash.
	GetTokenByHash(ctx context.Context, hash string) (*Token, error)
	// GetToken returns one token of a user by its id.
	GetToken(ctx context.Context, userID, tokenID string) (*Token, error)
	// ListTokens returns a user's tokens in creation order.
	ListTokens(ctx context.Context, userID string) ([]*Token, error)
	// UpdateToken replaces the stored token that has t.UserID and t.ID (its
	// hash and creation time stay), for lookups by hash too, only if the
	// stored token's Revision is t.Revision-1 (else ErrStale; a store may
	// also report a touch since the token was read as ErrStale). It keeps
	// the later of the two LastUsedAt and never brings back a token
	// revoked meanwhile (ErrNotFound).
	UpdateToken(ctx context.Context, t *Token, events ...Event) error
	// DeleteToken revokes one token of a user and returns it.
	DeleteToken(ctx context.Context, userID, tokenID string, events ...Event) (*Token, error)
	// TouchTokens records last-used times (best effort, batched).
	TouchTokens(ctx context.Context, used map[string]time.Time) error

	// Admit applies all charges of one user in one atomic step: either every
	// charge is within its limit and all are added, or none is. The window
	// of each charge is taken from the store's own clock.
	//
	// A non-empty requestID makes the admission idempotent for RequestTTL:
	// a repeat of an admitted request id is allowed without charging again,
	// and an admission arriving after Resolve cancelled its request id
	// fails with ErrCancelled and charges nothing.
	Admit(ctx context.Context, userID, requestID string, charges []Charge) (*Admission, error)
	// Resolve settles a request whose admission outcome the caller could
	// not see (a timeout: the admission may still arrive). With apply false
	// it takes back whatever the request charged (dropping its lease) and
	// keeps a later admission of it from charging; with apply true it makes
	// sure the charges are counted exactly once, without checking limits
	// (held charges get their lease). It is idempotent.
	Resolve(ctx context.Context, userID, requestID string, charges []Charge, apply bool) error
	// Settle ends a served request, exactly once: it applies what the
	// request actually used (without checking limits) and releases the
	// reservation its admission holds. If the lease has already expired
	// (and been released), only the actual charges are applied.
	Settle(ctx context.Context, userID, requestID string, actual []Charge) error
	// Usage returns the user's counters with the store's current time.
	Usage(ctx context.Context, userID string) (*UsageSnapshot, error)
	// ResetUsage zeroes the counters of the named resources (all if none).
	ResetUsage(ctx context.Context, userID string, resources []string, events ...Event) error

	// Close releases the store's resources.
	Close() error
}

// RequestTTL is how long a store remembers a request id, counted from when
// the store saw it. It only has to outlive the time between a timed-out
// admission reaching the store and its settlement being replayed (seconds
// after the store is back), and every admission writes one record, so it
// is short: at 10,000 requests a second Redis holds about 1.2M records.
const RequestTTL = 2 * time.Minute

// ErrCancelled: the admission's request id was cancelled by Resolve before
// the admission arrived.
var ErrCancelled = errors.New("request cancelled")

// NoLimit as a Charge's Limit counts usage without checking it.
const NoLimit int64 = -1

// Charge is one amount of one resource against one counter (resource and
// period) of a user. A positive Amount is refused if the counter would go
// over Limit; a negative Amount (a released object) is never refused and the
// counter never goes below zero.
type Charge struct {
	Resource string
	Per      Period
	Limit    int64
	Amount   int64
	// Key, if set, makes the charge distinct: a positive amount counts
	// only the first time Key is seen for Resource (a repeat adds nothing
	// and is never refused), and a negative amount takes back only a key
	// that was counted, forgetting it.
	Key string
	// Hold, if positive, makes the charge part of the request's
	// reservation: the store keeps a lease on it under the request id and,
	// unless Settle comes first, takes it back once Hold has passed (a
	// request that never settles, say because its node crashed, does not
	// keep its reservation forever).
	Hold time.Duration
	// Keep, with Hold, makes an expired lease stay counted instead of
	// being taken back: a headroom slice's node may have admitted all of
	// it before it died, so a slice that is never given back counts as
	// wholly used (a crash may cost a tenant unused headroom, never give
	// it extra). A settlement still replaces it.
	Keep bool
}

// MaxKeyLength caps a distinct charge's key.
const MaxKeyLength = 256

// Admission is the outcome of Store.Admit.
type Admission struct {
	// Allowed is true when every charge was applied.
	Allowed bool
	// Denied is the index of the first charge that would have gone over its
	// limit, or -1.
	Denied int
	// Now is the store's clock when the charges were evaluated.
	Now time.Time
	// Used holds, per charge, the counter after that charge; for the denied
	// charge, the counter as it stands (nothing is written on a denial).
	Used []int64
}

// Counter is the value of one counter in its current window.
type Counter struct {
	Resource string
	Per      Period
	// Start is the start of the window the value belongs to (zero for
	// lifetime counters). A value from an earlier window is stale.
	Start time.Time
	Used  int64
}

// UsageSnapshot is every counter of a user at the store's time Now.
type UsageSnapshot struct {
	Now      time.Time
	Counters []Counter
}

// Current returns the used amount of resource/per in the window holding
// Now (0 if the stored window is older).
func (s *UsageSnapshot) Current(resource string, per Period) int64 {
	start, _ := per.Window(s.Now)
	for _, c := range s.Counters {
		if c.Resource == resource && c.Per == per && c.Start.Equal(start) {
			return c.Used
		}
	}
	return 0
}

// CounterState is the stored state of one counter, for stores that keep
// counters themselves rather than in a server-side script.
type CounterState struct {
	Start time.Time
	Used  int64
}

// ApplyCharges evaluates charges against counters (keyed by CounterKey) at
// now, exactly as the Redis admission script does, and updates counters in
// place only when every charge is allowed. Charges are taken in order, each
// against the counter as the earlier charges of the call left it.
func ApplyCharges(counters map[string]CounterState, charges []Charge, now time.Time) *Admission {
	return ApplyKeyedCharges(counters, nil, 0, charges, now)
}

// DefaultDistinctKeys is the distinct keys (of meters with a key) a user
// keeps by default, in either store: past it, a new key counts but is not
// remembered (it counts again if it comes again: more, never less), so a
// tenant sending new keys without end cannot grow its user's data without
// end. About 10 MB of keys at most.
const DefaultDistinctKeys = 100000

// ApplyKeyedCharges is ApplyCharges with the set of distinct keys already
// counted (DistinctKey of resource and key), which it updates with the
// counters. With a nil set, every key is new and none is remembered. A
// new key is remembered only while the set holds fewer than keyCap keys
// (judged once, at the first key to remember, as the script does; 0: no
// cap).
func ApplyKeyedCharges(counters map[string]CounterState, keys map[string]struct{}, keyCap int, charges []Charge, now time.Time) *Admission {
	adm := &Admission{Allowed: true, Denied: -1, Now: now, Used: make([]int64, len(charges))}
	running := make(map[string]CounterState, len(charges))
	effective := make([]int64, len(charges))
	for i, c := range charges {
		amount := keyedAmount(keys, c)
		effective[i] = amount
		key := CounterKey(c.Resource, c.Per)
		cur, seen := running[key]
		if !seen {
			start, _ := c.Per.Window(now)
			cur = counters[key]
			if !cur.Start.Equal(start) {
				cur = CounterState{Start: start}
			}
		}
		adm.Used[i] = cur.Used
		if amount > 0 && c.Limit >= 0 && cur.Used+amount > c.Limit {
			adm.Allowed = false
			adm.Denied = i
			return adm
		}
		cur.Used = min(max(cur.Used+amount, 0), MaxCounter)
		running[key] = cur
		adm.Used[i] = cur.Used
	}
	for key, cur := range running {
		counters[key] = cur
	}
	if keys != nil {
		// In charge order, as the script writes them: a key is remembered
		// when a charge counted it (one of a key counted already adds
		// nothing and remembers nothing), forgotten by a negative charge.
		var room *bool
		for i, c := range charges {
			switch {
			case c.Key == "":
			case effective[i] > 0:
				if room == nil {
					r := keyCap <= 0 || len(keys) < keyCap
					room = &r
				}
				if *room {
					keys[DistinctKey(c.Resource, c.Key)] = struct{}{}
				}
			case c.Amount < 0:
				delete(keys, DistinctKey(c.Resource, c.Key))
			}
		}
	}
	return adm
}

// keyedAmount is what a charge adds given the distinct keys counted so far.
func keyedAmount(keys map[string]struct{}, c Charge) int64 {
	if c.Key == "" || keys == nil {
		return c.Amount
	}
	_, counted := keys[DistinctKey(c.Resource, c.Key)]
	if (c.Amount > 0) == counted {
		return 0
	}
	return c.Amount
}

// DistinctKey names a distinct key of a resource.
func DistinctKey(resource, key string) string { return resource + "|" + key }

// Unlimited returns charges without limits and with each amount multiplied
// by factor: 1 to force charges in, -1 to take them back, 0 to read.
func Unlimited(charges []Charge, factor int64) []Charge {
	out := make([]Charge, len(charges))
	for i, c := range charges {
		c.Limit = NoLimit
		c.Amount *= factor
		out[i] = c
	}
	return out
}

// CounterKey names the counter of resource in period per.
func CounterKey(resource string, per Period) string {
	return resource + "|" + per.String()
}

// ParseCounterKey splits a CounterKey.
func ParseCounterKey(key string) (resource string, per Period, ok bool) {
	for i := len(key) - 1; i >= 0; i-- {
		if key[i] == '|' {
			p := key[i+1:]
			if p == "lifetime" {
				return key[:i], Lifetime, true
			}
			per = Period(p)
			return key[:i], per, per.Valid() && per != Lifetime
		}
	}
	return "", "", false
}

// ValidateAdmission checks what a store's Admit is given: a request id, if
// any, is a valid id, a charge that holds a reservation has one (the
// reservation is released under it), and the charges pass validateCharges.
func ValidateAdmission(requestID string, charges []Charge) error {
	if requestID == "" {
		for _, c := range charges {
			if c.Hold > 0 {
				return Invalid("requestId", "is required to hold a reservation")
			}
		}
	} else if !ValidID(requestID) {
		return Invalid("requestId", "must be 1 to %d letters, digits, '-' or '_'", MaxIDLength)
	}
	return validateCharges(charges)
}

// ValidateSettlement checks what a store's Resolve and Settle are given:
// a valid request id (required) and charges that pass validateCharges.
func ValidateSettlement(requestID string, charges []Charge) error {
	if requestID == "" {
		return Invalid("requestId", "is required")
	}
	return ValidateAdmission(requestID, charges)
}

// validateCharges checks charges as every store must before applying
// them: a resource name a charge may have, a known period, a limit of
// NoLimit or within [0, MaxLimit], an amount within ±MaxLimit, a key of at
// most MaxKeyLength bytes and a hold of at most a day. The stores call it
// (through ValidateAdmission and ValidateSettlement); it is the one place
// these rules live.
func validateCharges(charges []Charge) error {
	for i, c := range charges {
		field := fmt.Sprintf("charges[%d]", i)
		switch {
		case !ValidChargeResource(c.Resource):
			return Invalid(field+".resource", "%q must match %s", c.Resource, ResourceNamePattern)
		case !c.Per.Valid():
			return Invalid(field+".per", "unknown period %q", string(c.Per))
		case c.Limit != NoLimit && (c.Limit < 0 || c.Limit > MaxLimit):
			return Invalid(field+".limit", "must be %d or between 0 and %d, got %d", NoLimit, int64(MaxLimit), c.Limit)
		case c.Amount < -MaxLimit || c.Amount > MaxLimit:
			return Invalid(field+".amount", "must be within ±%d, got %d", int64(MaxLimit), c.Amount)
		case len(c.Key) > MaxKeyLength:
			return Invalid(field+".key", "must be at most %d bytes", MaxKeyLength)
		case c.Hold < 0 || c.Hold > 24*time.Hour:
			return Invalid(field+".hold", "must be between 0 and 24h")
		}
	}
	return nil
}
