package quota

import (
	"time"
)

// Use is an amount of one resource that a request consumes.
type Use struct {
	Resource string
	Amount   int64
	// Key, if set, counts the use once per distinct key (see Charge.Key).
	Key string
	// Hold, if positive, marks the use as a reservation (see Charge.Hold).
	Hold time.Duration
	// Keep keeps a held use counted when its hold expires (see Charge.Keep).
	Keep bool
}

// LimitState is one limit of a user as it stands after an admission.
type LimitState struct {
	Resource string
	// Token is set when the limit is a token's own (its id).
	Token string
	Limit Limit
	Used  int64
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
