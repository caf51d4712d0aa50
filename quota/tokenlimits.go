package quota

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Per-token limits: a token may carry limits of its own (one budget per
// app of a tenant). Its counters live with its user's, under a resource
// named TokenResource(token id, resource), so that one admission charges
// the user's and the token's counters in the same atomic step.

// tokenResourcePrefix starts a token's counter resources.
const tokenResourcePrefix = "t."

// TokenResource names the counter of resource kept for one token.
func TokenResource(tokenID, resource string) string {
	return tokenResourcePrefix + tokenID + "." + resource
}

// SplitTokenResource splits a TokenResource name; ok is false for a
// user's own resource.
func SplitTokenResource(name string) (tokenID, resource string, ok bool) {
	rest, found := strings.CutPrefix(name, tokenResourcePrefix)
	if !found {
		return "", "", false
	}
	i := strings.IndexByte(rest, '.') // token ids hold no dot; resources may ("tokens.premium")
	if i <= 0 {
		return "", "", false
	}
	return rest[:i], rest[i+1:], true
}

// ValidChargeResource reports whether name may be the resource of a
// charge: a resource name, or a token's counter of one.
func ValidChargeResource(name string) bool {
	if id, r, ok := SplitTokenResource(name); ok {
		return validID(id) && ValidResourceName(r)
	}
	return ValidResourceName(name)
}

// tokenCharges are the charges of use against tok's counters: like a
// user's, its lifetime counter of every resource it uses, limited or not,
// and its windowed limits. A lifetime limit set on the token later (PATCH)
// then counts everything the token used before; a window limit counts from
// its window on, as a user's does. Distinct-key resources (conversations)
// are the exception: they count for a token from its first limit on them.
func tokenCharges(tok *Token, use Use, charges []Charge, limits []*Limit) ([]Charge, []*Limit) {
	if tok == nil || strings.HasPrefix(use.Resource, ReservedPrefix) {
		return charges, limits
	}
	resource := TokenResource(tok.ID, use.Resource)
	ls := tok.Limits[use.Resource]
	if use.Key != "" && len(ls) == 0 {
		// A distinct-key use (a conversation) would take a second slot of
		// the user's distinct-key cap for a count no limit reads: keyed
		// resources count for a token from its first limit on them.
		return charges, limits
	}
	return periodCharges(resource, ls, use, charges, limits)
}

// validateTokenLimits checks a token's limits.
func validateTokenLimits(v *validator, l Limits) {
	if l == nil {
		return
	}
	if err := l.Validate(); err != nil {
		var ve *ValidationError
		if errors.As(err, &ve) {
			for _, f := range ve.Fields {
				v.add(f.Field, "%s", f.Detail)
			}
		} else {
			v.add("limits", "%s", err.Error())
		}
	}
	if _, ok := l[ResourceCredits]; ok {
		v.add("limits.credits", "credits are the user's, not a token's")
	}
}

// TokenUsage is a token's own limits and usage.
type TokenUsage struct {
	UserID  string      `json:"userId"`
	TokenID string      `json:"tokenId"`
	Items   []UsageItem `json:"items"`
}

// TokenUsage reports the usage of a token's own limits.
func (s *Service) TokenUsage(ctx context.Context, userID, tokenID string) (*TokenUsage, error) {
	toks, err := s.ListTokens(ctx, userID)
	if err != nil {
		return nil, err
	}
	var tok *Token
	for i := range toks {
		if toks[i].ID == tokenID {
			tok = &toks[i]
		}
	}
	if tok == nil {
		return nil, fmt.Errorf("token %q: %w", tokenID, ErrNotFound)
	}
	s.returnSlices(ctx, userID)
	snap, err := s.store.Usage(ctx, userID)
	if err != nil {
		return nil, err
	}
	out := &TokenUsage{UserID: userID, TokenID: tokenID, Items: tokenUsageItems(tok, snap)}
	return out, nil
}

// tokenUsageItems lists a token's limited counters in snap, and the
// lifetime use of every other resource it used (no limit).
func tokenUsageItems(tok *Token, snap *UsageSnapshot) []UsageItem {
	items := []UsageItem{}
	for _, c := range snap.Counters {
		id, name, ok := SplitTokenResource(c.Resource)
		if !ok || id != tok.ID || c.Per != Lifetime || slices.ContainsFunc(tok.Limits[name], func(l Limit) bool { return l.Per == Lifetime }) {
			continue
		}
		items = append(items, UsageItem{Resource: name, Per: Lifetime.String(), Used: c.Used})
	}
	for name, ls := range tok.Limits {
		for _, l := range ls {
			lim := l.Limit
			it := UsageItem{Resource: name, Per: l.Per.String(), Used: snap.Current(TokenResource(tok.ID, name), l.Per), Limit: &lim}
			r := max(lim-it.Used, 0)
			it.Remaining = &r
			if l.Per != Lifetime {
				_, end := l.Per.Window(snap.Now)
				it.ResetsAt = &end
			}
			items = append(items, it)
		}
	}
	sort.Slice(items, func(i, j int) bool {
		if items[i].Resource != items[j].Resource {
			return items[i].Resource < items[j].Resource
		}
		return Period(items[i].Per).Order() < Period(items[j].Per).Order()
	})
	return items
}
