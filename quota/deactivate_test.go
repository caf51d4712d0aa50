package quota_test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/boltstore"
)

// TestDeactivationZeroesCreditsWithAnEvent: disabling a user zeroes its
// prepaid balance, and a credits.zeroed event (in the same step as the
// change) carries the amount, so that an operator can give it back with
// a top-up once the user is enabled again.
func TestDeactivationZeroesCreditsWithAnEvent(t *testing.T) {
	t.Parallel()
	svc, _, _, events := newService(t)
	ctx := context.Background()
	u, err := svc.CreateUser(ctx, quota.NewUser{Name: "C", Email: "c@example.com", Credits: 100})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.AdmitUses(ctx, u, []quota.Use{{Resource: quota.ResourceCredits, Amount: 30}}); err != nil {
		t.Fatal(err)
	}
	disabled := quota.StatusDisabled
	if _, err := svc.UpdateUser(ctx, u.ID, quota.UserPatch{Status: &disabled}); err != nil {
		t.Fatal(err)
	}
	var zeroed *quota.Event
	for i, e := range *events {
		if e.Type == quota.EventCreditsZeroed {
			zeroed = &(*events)[i]
		}
	}
	if zeroed == nil {
		t.Fatalf("no %s event in %v", quota.EventCreditsZeroed, *events)
	}
	var data struct{ Amount, Granted, Spent int64 }
	if err := json.Unmarshal(zeroed.Data, &data); err != nil || data.Amount != 70 || data.Granted != 100 || data.Spent != 30 {
		t.Fatalf("credits.zeroed data %s: %+v %v", zeroed.Data, data, err)
	}
	active := quota.StatusActive
	if _, err := svc.UpdateUser(ctx, u.ID, quota.UserPatch{Status: &active}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.AddCredits(ctx, u.ID, data.Amount); err != nil {
		t.Fatal(err)
	}
	usage, err := svc.Usage(ctx, u.ID)
	if err != nil || usage.Credits != 70 {
		t.Fatalf("balance after the restoring top-up: %+v %v", usage, err)
	}
}

// failingReset fails its next ResetUsage.
type failingReset struct {
	quota.Store
	fail bool
}

func (f *failingReset) ResetUsage(ctx context.Context, userID string, resources []string, events ...quota.Event) error {
	if f.fail {
		f.fail = false
		return errors.New("store stalled")
	}
	return f.Store.ResetUsage(ctx, userID, resources, events...)
}

// TestDeactivationFinishedBySendingItAgain: when clearing the credits
// spent fails after the user was disabled, the error says so and sending
// the change again finishes it (before, the retry changed nothing and the
// old spending was counted once the user was enabled and topped up).
func TestDeactivationFinishedBySendingItAgain(t *testing.T) {
	t.Parallel()
	bs, err := boltstore.Open(boltstore.Options{Path: filepath.Join(t.TempDir(), "q.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bs.Close() })
	st := &failingReset{Store: bs}
	svc, err := quota.NewService(quota.Options{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	ctx := context.Background()
	u, err := svc.CreateUser(ctx, quota.NewUser{Name: "C", Email: "c@example.com", Credits: 100})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.AdmitUses(ctx, u, []quota.Use{{Resource: quota.ResourceCredits, Amount: 30}}); err != nil {
		t.Fatal(err)
	}
	disabled, active := quota.StatusDisabled, quota.StatusActive
	st.fail = true
	if _, err := svc.UpdateUser(ctx, u.ID, quota.UserPatch{Status: &disabled}); err == nil || !strings.Contains(err.Error(), "send the change again") {
		t.Fatalf("a deactivation whose clearing failed: %v", err)
	}
	if _, err := svc.UpdateUser(ctx, u.ID, quota.UserPatch{Status: &disabled}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.UpdateUser(ctx, u.ID, quota.UserPatch{Status: &active}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.AddCredits(ctx, u.ID, 50); err != nil {
		t.Fatal(err)
	}
	if usage, err := svc.Usage(ctx, u.ID); err != nil || usage.Credits != 50 {
		t.Fatalf("balance after deactivation, a retry, enabling and a top-up of 50: %+v %v", usage, err)
	}
}
