package quota

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"
)

// UsageItem reports one counter of a user.
type UsageItem struct {
	Resource string `json:"resource"`
	Per      string `json:"per"`
	Used     int64  `json:"used"`
	// Reserved is the part of Used that in-flight requests reserved and
	// have not settled yet (lifetime counters of token resources).
	Reserved  int64      `json:"reserved"`
	Limit     *int64     `json:"limit"`
	Remaining *int64     `json:"remaining"`
	ResetsAt  *time.Time `json:"resetsAt"`
}

// Usage is a user's usage of every limited or counted resource.
type Usage struct {
	UserID string    `json:"userId"`
	At     time.Time `json:"at"`
	// Credits is the prepaid balance left: granted minus spent.
	Credits int64       `json:"credits"`
	Items   []UsageItem `json:"items"`
}

// Usage reports a user's usage in the current window of every limit and of
// every counted resource.
func (s *Service) Usage(ctx context.Context, userID string) (*Usage, error) {
	u, err := s.GetUser(ctx, userID)
	if err != nil {
		return nil, err
	}
	s.returnSlices(ctx, userID)
	snap, err := s.store.Usage(ctx, userID)
	if err != nil {
		return nil, err
	}
	out := &Usage{UserID: u.ID, At: snap.Now.UTC(), Credits: max(u.Credits-snap.Current(ResourceCredits, Lifetime), 0), Items: []UsageItem{}}
	seen := map[string]bool{}
	add := func(resource string, per Period, lim *int64) {
		key := CounterKey(resource, per)
		if seen[key] {
			return
		}
		seen[key] = true
		it := UsageItem{Resource: resource, Per: per.String(), Used: snap.Current(resource, per), Limit: lim}
		if lim != nil {
			r := max(*lim-it.Used, 0)
			it.Remaining = &r
		}
		if per != Lifetime {
			_, end := per.Window(snap.Now)
			it.ResetsAt = &end
		}
		out.Items = append(out.Items, it)
	}
	for name, ls := range u.Limits {
		for _, l := range ls {
			lim := l.Limit
			add(name, l.Per, &lim)
		}
	}
	if u.Credits > 0 || snap.Current(ResourceCredits, Lifetime) > 0 {
		granted := u.Credits
		add(ResourceCredits, Lifetime, &granted)
	}
	for _, c := range snap.Counters {
		if strings.HasPrefix(c.Resource, ReservedPrefix) || strings.HasPrefix(c.Resource, tokenResourcePrefix) {
			continue
		}
		if start, _ := c.Per.Window(snap.Now); c.Start.Equal(start) {
			add(c.Resource, c.Per, nil)
		}
	}
	for i := range out.Items {
		if it := &out.Items[i]; it.Per == Lifetime.String() {
			it.Reserved = snap.Current(ReservedPrefix+it.Resource, Lifetime)
		}
	}
	sort.Slice(out.Items, func(i, j int) bool {
		a, b := out.Items[i], out.Items[j]
		if a.Resource != b.Resource {
			return a.Resource < b.Resource
		}
		return Period(a.Per).Order() < Period(b.Per).Order()
	})
	return out, nil
}

// Order ranks periods from the longest-lived: lifetime, minute, hour, day,
// month (for listing counters; "lifetime" is accepted for Lifetime).
func (p Period) Order() int {
	switch p {
	case Minute:
		return 1
	case Hour:
		return 2
	case Day:
		return 3
	case Month:
		return 4
	}
	return 0
}

// SortCounters orders counters by resource, then period.
func SortCounters(cs []Counter) {
	sort.Slice(cs, func(i, j int) bool {
		if cs[i].Resource != cs[j].Resource {
			return cs[i].Resource < cs[j].Resource
		}
		return cs[i].Per.Order() < cs[j].Per.Order()
	})
}

// ResetUsage zeroes a user's counters of the named resources (all if none)
// and returns the usage after the reset.
func (s *Service) ResetUsage(ctx context.Context, userID string, resources []string) (*Usage, error) {
	var v validator
	for i, r := range resources {
		switch {
		case !ValidResourceName(r):
			v.add(fmt.Sprintf("resources[%d]", i), "resource name must match %s", ResourceNamePattern)
		case InternalResource(r):
			// What live reservations and slices hold: a reset keeps them
			// (reset of every resource included).
			v.add(fmt.Sprintf("resources[%d]", i), "%s", internalResourceDetail(r))
		}
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	if _, err := s.GetUser(ctx, userID); err != nil {
		return nil, err
	}
	ev := s.newEvent(ctx, EventUsageReset, userID, struct {
		Resources []string `json:"resources"`
	}{append([]string{}, resources...)})
	s.returnSlices(ctx, userID)
	if err := s.store.ResetUsage(ctx, userID, resources, ev); err != nil {
		return nil, err
	}
	// Every node gives back its slices of the user and forgets its
	// refusals: the reset changes the answer.
	s.refused.forget(userID)
	s.invalidate(ctx, recallPrefix+userID)
	s.published(ev)
	return s.Usage(ctx, userID)
}
