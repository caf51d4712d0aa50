package quota

import (
	"strings"
	"time"
)

// Token resources. "tokens" counts input + output; operators may also limit
// each direction.
const (
	ResourceInputTokens  = "input_tokens"
	ResourceOutputTokens = "output_tokens"
)

// TokenCount is a number of LLM tokens by direction.
type TokenCount struct {
	Input, Output int64
}

// Uses returns the charges of c: tokens (input + output), input_tokens and
// output_tokens.
func (c TokenCount) Uses() []Use {
	return []Use{
		{Resource: ResourceTokens, Amount: satAdd(c.Input, c.Output)},
		{Resource: ResourceInputTokens, Amount: c.Input},
		{Resource: ResourceOutputTokens, Amount: c.Output},
	}
}

// ReservedPrefix names the counters of what in-flight requests have
// reserved: "reserved_tokens" holds the part of "tokens" that is an
// estimate not yet settled. Usage reports them as Reserved of their
// resource.
const ReservedPrefix = "reserved_"

// Reserved returns the uses that mark c as reserved; they are held with the
// reservation and released with it.
func (c TokenCount) Reserved() []Use {
	uses := c.Uses()
	for i := range uses {
		uses[i].Resource = ReservedPrefix + uses[i].Resource
	}
	return uses
}

// Held marks uses as a reservation held for d (see Charge.Hold). A
// reservation whose request never settles (its node died) stays counted
// when its hold ends (Charge.Keep): the request may have used all of it;
// only the reserved_ markers are released.
func Held(uses []Use, d time.Duration) []Use {
	out := make([]Use, len(uses))
	for i, u := range uses {
		u.Hold = d
		u.Keep = !strings.HasPrefix(u.Resource, ReservedPrefix)
		out[i] = u
	}
	return out
}
