package admin

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// TestInternalResources: the gateway's own counters (reserved_*: what
// in-flight requests and headroom slices hold; t.*: a token's counters)
// and the store's own fields ("~due", "<resource>|<period>") cannot be
// given a limit, by any route that sets limits; a stored limit on one
// (from before the rule) can still be removed.
func TestInternalResources(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(o *Options) { o.ModelGroups = []string{"premium"} })
	u := e.createUser(t, `{"name": "A", "email": "a@example.com", "limits": {"tokens": 5}}`)
	user := "/users/" + u.ID
	for _, name := range []string{"reserved_slices", "reserved_tokens", "reserved_credits", "reserved_messages", "reserved_x", "reserved_tokens.premium", "t.premium", "~due", "tokens|lifetime", "tokens|minute|s"} {
		t.Run(name, func(t *testing.T) {
			field := "limits." + name
			for _, tc := range []struct{ method, path, body string }{
				{"POST", "/users", fmt.Sprintf(`{"name": "B", "email": "b@example.com", "limits": {%q: 0}}`, name)},
				{"PATCH", user, fmt.Sprintf(`{"limits": {%q: 0}}`, name)},
				{"PUT", user + "/limits", fmt.Sprintf(`{"tokens": 5, %q: 0}`, name)},
				{"PATCH", user + "/limits", fmt.Sprintf(`{%q: {"limit": 0, "per": "minute"}}`, name)},
				{"POST", user + "/tokens", fmt.Sprintf(`{"limits": {%q: 0}}`, name)},
			} {
				p := problem(t, e.do(t, req{method: tc.method, path: tc.path, body: tc.body}), http.StatusBadRequest, field)
				if strings.HasPrefix(name, "reserved_") && !strings.Contains(p.Detail, "internal") {
					t.Errorf("%s %s: detail %q does not say the resource is internal", tc.method, tc.path, p.Detail)
				}
			}
		})
	}
	got, err := e.svc.GetUser(context.Background(), u.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Limits) != 1 {
		t.Fatalf("refused limits were stored: %v", got.Limits)
	}
	if ts, _ := e.svc.ListTokens(context.Background(), u.ID); len(ts) != 0 {
		t.Fatalf("a token with refused limits was created: %+v", ts)
	}

	t.Run("a stored one can be removed", func(t *testing.T) {
		now := time.Now().UTC()
		old := &quota.User{ID: quota.NewID(), Name: "Old", Email: "old@example.com", Status: quota.StatusActive,
			Limits: quota.Limits{"tokens": {{Limit: 9}}, "reserved_slices": {{Limit: 0}}}, CreatedAt: now, UpdatedAt: now}
		if err := e.store.CreateUser(context.Background(), old); err != nil {
			t.Fatal(err)
		}
		e.call(t, "GET", "/users/"+old.ID, "", http.StatusOK)
		// Any other change is refused until the internal limit is gone ...
		problem(t, e.do(t, req{method: "PATCH", path: "/users/" + old.ID, body: `{"name": "Older"}`}), http.StatusBadRequest, "limits.reserved_slices")
		// ... which a merge with null removes.
		var l quota.Limits
		e.call(t, "PATCH", "/users/"+old.ID+"/limits", `{"reserved_slices": null}`, http.StatusOK).decode(t, &l)
		if _, ok := l["reserved_slices"]; ok || len(l["tokens"]) != 1 {
			t.Fatalf("limits after removing reserved_slices: %v", l)
		}
		e.call(t, "PATCH", "/users/"+old.ID, `{"name": "Older"}`, http.StatusOK)
	})
}
