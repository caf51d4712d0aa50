package quota

import "context"

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
		{Resource: ResourceTokens, Amount: c.Input + c.Output},
		{Resource: ResourceInputTokens, Amount: c.Input},
		{Resource: ResourceOutputTokens, Amount: c.Output},
	}
}

// ReservedPrefix names the counters of what in-flight requests have
// reserved: "reserved_tokens" holds the part of "tokens" that is an
// estimate not yet settled. Usage reports them as Reserved of their
// resource.
const ReservedPrefix = "reserved_"

// Reservation returns the uses that mark c as reserved (factor 1) or
// release the mark (factor -1).
func (c TokenCount) Reservation(factor int64) []Use {
	uses := c.Uses()
	for i := range uses {
		uses[i].Resource = ReservedPrefix + uses[i].Resource
		uses[i].Amount *= factor
	}
	return uses
}

// TokenDeltas returns what settles a reservation to the actual count: the
// difference per resource, leaving out resources that need no change.
func TokenDeltas(reserved, actual TokenCount) []Use {
	var out []Use
	r, a := reserved.Uses(), actual.Uses()
	for i := range r {
		if d := a[i].Amount - r[i].Amount; d != 0 {
			out = append(out, Use{Resource: r[i].Resource, Amount: d})
		}
	}
	return out
}

// Settle applies the difference between what a request reserved and what
// it used, exactly once per request id, without checking limits (the
// request has been served). The settlement is journaled and replayed if the
// store does not take it now.
func (s *Service) Settle(ctx context.Context, u *User, requestID string, deltas []Use) error {
	nonzero := deltas[:0:0]
	for _, d := range deltas {
		if d.Amount != 0 {
			nonzero = append(nonzero, d)
		}
	}
	if len(nonzero) == 0 {
		return nil
	}
	deltas = nonzero
	p := Pending{userID: u.ID, requestID: requestID + "-settle", charges: Unlimited(s.charges(u, deltas), 1)}
	err := s.hot(ctx, func(ctx context.Context) error {
		return s.store.Resolve(ctx, p.userID, p.requestID, p.charges, true)
	})
	if err != nil {
		s.journal.add(resolution{p: p, apply: true})
	}
	return err
}
