package quota

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// MigrateSummary counts what Migrate copied and what the destination
// already had.
type MigrateSummary struct {
	Users, UsersPresent       int
	Tokens, TokensPresent     int
	Counters, CountersPresent int
}

// String reports the summary in one line.
func (m MigrateSummary) String() string {
	return fmt.Sprintf("users: %d copied, %d already there; tokens: %d copied, %d already there; counters: %d set, %d already equal",
		m.Users, m.UsersPresent, m.Tokens, m.TokensPresent, m.Counters, m.CountersPresent)
}

// Migrate copies every user (with its id, limits, credits, roles and
// revision), every token (its hash, so no tenant has to get a new one) and
// the current window of every counter from src to dst. It is idempotent:
// what dst already has is left as it is, and a counter is set to the
// source's value, so running it again (after an interruption) copies only
// what is missing. Run it with the gateways stopped: requests admitted
// meanwhile would be lost or counted twice. Distinct keys (conversations
// already counted), reservations in flight and the event outbox are not
// copied.
func Migrate(ctx context.Context, src, dst Store, progress func(MigrateSummary)) (MigrateSummary, error) {
	var sum MigrateSummary
	after := ""
	for {
		users, more, err := src.ListUsers(ctx, after, MaxPageSize)
		if err != nil {
			return sum, fmt.Errorf("listing users: %w", err)
		}
		for _, u := range users {
			if err := migrateUser(ctx, src, dst, u, &sum); err != nil {
				return sum, fmt.Errorf("user %s: %w", u.ID, err)
			}
			after = u.ID
		}
		if progress != nil {
			progress(sum)
		}
		if !more || len(users) == 0 {
			return sum, nil
		}
	}
}

func migrateUser(ctx context.Context, src, dst Store, u *User, sum *MigrateSummary) error {
	switch _, err := dst.GetUser(ctx, u.ID); {
	case errors.Is(err, ErrNotFound):
		if err := dst.CreateUser(ctx, u); err != nil {
			return fmt.Errorf("creating: %w", err)
		}
		sum.Users++
	case err != nil:
		return err
	default:
		sum.UsersPresent++
	}
	toks, err := src.ListTokens(ctx, u.ID)
	if err != nil {
		return fmt.Errorf("listing tokens: %w", err)
	}
	for _, t := range toks {
		switch _, err := dst.GetTokenByHash(ctx, t.Hash); {
		case errors.Is(err, ErrNotFound):
			if err := dst.CreateToken(ctx, t); err != nil {
				return fmt.Errorf("token %s: %w", t.ID, err)
			}
			sum.Tokens++
		case err != nil:
			return err
		default:
			sum.TokensPresent++
		}
	}
	from, err := src.Usage(ctx, u.ID)
	if err != nil {
		return fmt.Errorf("reading counters: %w", err)
	}
	to, err := dst.Usage(ctx, u.ID)
	if err != nil {
		return fmt.Errorf("reading counters: %w", err)
	}
	var set []Charge
	for _, c := range from.Counters {
		if strings.HasPrefix(c.Resource, ReservedPrefix) {
			continue // reservations in flight belong to requests of the source
		}
		if start, _ := c.Per.Window(from.Now); !c.Start.Equal(start) {
			continue // an older window: nothing left to count
		}
		if d := c.Used - to.Current(c.Resource, c.Per); d != 0 {
			set = append(set, Charge{Resource: c.Resource, Per: c.Per, Limit: NoLimit, Amount: clampSigned(d)})
			sum.Counters++
		} else {
			sum.CountersPresent++
		}
	}
	if len(set) > 0 {
		if _, err := dst.Admit(ctx, u.ID, "", set); err != nil {
			return fmt.Errorf("setting counters: %w", err)
		}
	}
	return nil
}
