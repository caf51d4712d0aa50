package quota_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// TestServiceLookupsAndRoles: users found by email (any case) and
// external id, listed in pages; the event log refuses an event id as a
// cursor and an unknown type; roles granted and revoked by name; the
// service's stats count cache hits.
func TestServiceLookupsAndRoles(t *testing.T) {
	t.Parallel()
	svc, _, _, _ := newService(t)
	ctx := context.Background()
	var ids []string
	for i := range 5 {
		u, err := svc.CreateUser(ctx, quota.NewUser{Name: "L", Email: fmt.Sprintf("L%d@Example.com", i), ExternalID: fmt.Sprintf("ext-%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, u.ID)
	}
	if u, err := svc.GetUserByEmail(ctx, " l3@EXAMPLE.com "); err != nil || u.ID != ids[3] {
		t.Fatalf("by email: %+v %v", u, err)
	}
	if u, err := svc.GetUserByExternalID(ctx, "ext-4"); err != nil || u.ID != ids[4] {
		t.Fatalf("by external id: %+v %v", u, err)
	}
	for _, bad := range []string{"", "nobody@example.com"} {
		if _, err := svc.GetUserByEmail(ctx, bad); !errors.Is(err, quota.ErrNotFound) {
			t.Fatalf("email %q: %v", bad, err)
		}
	}
	if _, err := svc.GetUserByExternalID(ctx, "ext-9"); !errors.Is(err, quota.ErrNotFound) {
		t.Fatalf("an unknown external id: %v", err)
	}
	var listed []string
	for after := ""; ; {
		page, next, err := svc.ListUsers(ctx, after, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range page {
			listed = append(listed, u.ID)
		}
		if next == "" {
			break
		}
		after = next
	}
	if fmt.Sprint(listed) != fmt.Sprint(ids) {
		t.Fatalf("listed %v, want %v in creation order", listed, ids)
	}
	for _, take := range []int{0, quota.MaxPageSize + 1} {
		if _, _, err := svc.ListUsers(ctx, "", take); !errors.Is(err, quota.ErrInvalid) {
			t.Fatalf("take %d: %v", take, err)
		}
	}
	if _, _, err := svc.ListUsers(ctx, "not an id", 10); !errors.Is(err, quota.ErrInvalid) {
		t.Fatalf("a bad cursor: %v", err)
	}

	page, err := svc.ListEvents(ctx, quota.EventQuery{Take: 2})
	if err != nil || len(page.Events) != 2 {
		t.Fatalf("events: %+v %v", page, err)
	}
	if _, err := svc.ListEvents(ctx, quota.EventQuery{Take: 2, After: page.Events[0].ID}); !errors.Is(err, quota.ErrInvalid) {
		t.Fatalf("an event id as the cursor: %v", err)
	}
	if _, err := svc.ListEvents(ctx, quota.EventQuery{Take: 2, TypePrefix: "usr."}); !errors.Is(err, quota.ErrInvalid) {
		t.Fatalf("an unknown type: %v", err)
	}
	if p, err := svc.ListEvents(ctx, quota.EventQuery{Take: 10, TypePrefix: "user.*"}); err != nil || len(p.Events) != 5 {
		t.Fatalf("user.* events: %d %v", len(p.Events), err)
	}

	roles := quota.Roles{"Chatter": {"chat"}}
	if _, err := svc.GrantRole(ctx, ids[0], roles, "Chater", "*"); !errors.Is(err, quota.ErrInvalid) {
		t.Fatalf("an unknown role: %v", err)
	}
	if _, err := svc.GrantRole(ctx, ids[0], roles, "Chatter", "chatbots/1"); err != nil {
		t.Fatal(err)
	}
	if u, _ := svc.GetUser(ctx, ids[0]); !roles.Permits(u, "chat", "chatbots/1") || roles.Permits(u, "chat", "chatbots/2") {
		t.Fatalf("after the grant: %+v", u.Roles)
	}
	if err := svc.RevokeRole(ctx, ids[0], "Chatter", "chatbots/2"); !errors.Is(err, quota.ErrNotFound) {
		t.Fatalf("revoking a grant not made: %v", err)
	}
	if err := svc.RevokeRole(ctx, ids[0], "Chatter", "chatbots/1"); err != nil {
		t.Fatal(err)
	}
	if u, _ := svc.GetUser(ctx, ids[0]); len(u.Roles) != 0 {
		t.Fatalf("after the revocation: %+v", u.Roles)
	}
	for _, bad := range []string{"", "two words", "x/y"} {
		if quota.ValidateRoleName(bad) == nil {
			t.Fatalf("role name %q accepted", bad)
		}
	}
	if st := svc.Stats(); st.BreakerOpen || st.JournalDepth != 0 {
		t.Fatalf("stats: %+v", st)
	}
}
