package storetest

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// walkResources are the resources a walk charges: plain counters and one
// counted by distinct keys, a token's own counter among them.
var walkResources = []string{"messages", "tokens", "conversations", "t.0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b.messages"}

// Walk is a model-based random walk: one seeded sequence of admissions
// (several charges each, lifetime and daily, limited or not, positive and
// negative amounts, distinct keys), resets of some or all resources and
// usage reads, for a few users, on every store in stores and on the Go
// reference (quota.ApplyKeyedCharges over counters kept in memory). It
// fails at the first step where a store's answer or a user's counters
// differ from the reference, naming the seed and the step. The stores
// must keep at most keyCap distinct keys a user (their DistinctKeys
// option), as the reference does. Holds and
// settlements are left to the conformance tests (their expiry runs on
// each store's clock).
func Walk(t *testing.T, seed uint64, steps, keyCap int, stores map[string]quota.Store) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	names := make([]string, 0, len(stores))
	for name := range stores {
		names = append(names, name)
	}
	slices.Sort(names)
	type model struct {
		counters map[string]quota.CounterState
		keys     map[string]struct{}
		history  []string // the user's steps, printed when one fails
	}
	var users []string
	models := map[string]*model{}
	for i := range 3 {
		now := time.Now().UTC().Truncate(time.Millisecond)
		u := &quota.User{ID: quota.NewID(), Name: "Walker", Email: fmt.Sprintf("walk-%d-%d@example.com", seed, i),
			Status: quota.StatusActive, Limits: quota.Limits{}, CreatedAt: now, UpdatedAt: now}
		for _, name := range names {
			if err := stores[name].CreateUser(ctx(t), u); err != nil {
				t.Fatalf("%s: CreateUser: %v", name, err)
			}
		}
		users = append(users, u.ID)
		models[u.ID] = &model{counters: map[string]quota.CounterState{}, keys: map[string]struct{}{}}
	}
	pers := []quota.Period{quota.Lifetime, quota.Day}
	var m *model
	at := func(step int, what string) string {
		return fmt.Sprintf("seed %d step %d (%s); the user's steps before:\n  %s", seed, step, what, strings.Join(m.history, "\n  "))
	}
	for step := range steps {
		// A day's window must not end between the stores' clocks and the
		// reference's within one step.
		if now := time.Now().UTC(); now.Add(2*time.Second).Day() != now.Day() {
			time.Sleep(3 * time.Second)
		}
		uid := users[rng.IntN(len(users))]
		m = models[uid]
		switch op := rng.IntN(10); {
		case op < 7:
			n := 1 + rng.IntN(4)
			charges := make([]quota.Charge, n)
			for i := range charges {
				c := quota.Charge{Resource: walkResources[rng.IntN(len(walkResources))], Per: pers[rng.IntN(len(pers))],
					Limit: quota.NoLimit, Amount: int64(rng.IntN(9)) - 2}
				if rng.IntN(3) > 0 {
					c.Limit = int64(rng.IntN(25))
				}
				if strings.HasSuffix(c.Resource, "conversations") {
					c.Key = fmt.Sprintf("c%d", rng.IntN(6))
					c.Amount = []int64{1, 1, 1, -1}[rng.IntN(4)]
				}
				charges[i] = c
			}
			want := quota.ApplyKeyedCharges(m.counters, m.keys, keyCap, charges, time.Now().UTC())
			for _, name := range names {
				got, err := stores[name].Admit(ctx(t), uid, "", charges)
				if err != nil {
					t.Fatalf("%s: %s: Admit(%+v): %v", at(step, "admit"), name, charges, err)
				}
				if got.Allowed != want.Allowed || got.Denied != want.Denied || !slices.Equal(got.Used, want.Used) {
					t.Fatalf("%s: %s admitted %+v: allowed %v denied %d used %v; the reference: allowed %v denied %d used %v",
						at(step, "admit"), name, charges, got.Allowed, got.Denied, got.Used, want.Allowed, want.Denied, want.Used)
				}
			}
			m.history = append(m.history, fmt.Sprintf("%d admit %s -> %v %v", step, chargeText(charges), want.Allowed, want.Used))
		case op < 8:
			// Some resources by name, or none: all.
			var named []string
			for _, r := range []string{"messages", "tokens", "conversations"} {
				if rng.IntN(2) == 0 {
					named = append(named, r)
				}
			}
			reset := func(resource string) bool {
				if _, r, ok := quota.SplitTokenResource(resource); ok {
					resource = r // a token's counter goes with its resource
				}
				return len(named) == 0 || slices.Contains(named, resource)
			}
			for k := range m.counters {
				if r, _, _ := quota.ParseCounterKey(k); reset(r) {
					delete(m.counters, k)
				}
			}
			for k := range m.keys {
				if r, _, _ := strings.Cut(k, "|"); reset(r) {
					delete(m.keys, k)
				}
			}
			m.history = append(m.history, fmt.Sprintf("%d reset %v", step, named))
			for _, name := range names {
				if err := stores[name].ResetUsage(ctx(t), uid, named); err != nil {
					t.Fatalf("%s: %s: ResetUsage(%v): %v", at(step, "reset"), name, named, err)
				}
			}
		default:
			for _, name := range names {
				snap, err := stores[name].Usage(ctx(t), uid)
				if err != nil {
					t.Fatalf("%s: %s: Usage: %v", at(step, "usage"), name, err)
				}
				for _, r := range walkResources {
					for _, per := range pers {
						want := m.counters[quota.CounterKey(r, per)].Used
						if start, _ := per.Window(snap.Now); m.counters[quota.CounterKey(r, per)].Start.Before(start) && per != quota.Lifetime {
							want = 0
						}
						if got := snap.Current(r, per); got != want {
							t.Fatalf("%s: %s: %s per %s is %d, the reference %d", at(step, "usage"), name, r, per, got, want)
						}
					}
				}
			}
		}
	}
}

func chargeText(charges []quota.Charge) string {
	parts := make([]string, len(charges))
	for i, c := range charges {
		parts[i] = fmt.Sprintf("%s/%s %+d of %d", c.Resource, c.Per, c.Amount, c.Limit)
		if c.Key != "" {
			parts[i] += " key " + c.Key
		}
	}
	return "[" + strings.Join(parts, ", ") + "]"
}
