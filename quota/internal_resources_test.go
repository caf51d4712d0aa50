package quota_test

import (
	"context"
	"testing"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// TestInternalResources: no limit may name a counter the gateway keeps
// for itself, however it is set; a nil entry (removal) may. No resource
// name can be one of the stores' own fields.
func TestInternalResources(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name     string
		internal bool
	}{
		{"reserved_slices", true},
		{"reserved_tokens", true},
		{"reserved_credits", true},
		{"reserved_x", true},
		{"reserved_tokens.premium", true},
		{"t.premium", true},
		{"tokens", false},
		{"tokens.premium", false},
		{"t", false},
		{"reserved", false},
		{"reservedx", false},
		{"tx.premium", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := quota.InternalResource(tt.name); got != tt.internal {
				t.Fatalf("InternalResource = %v, want %v", got, tt.internal)
			}
			err := quota.Limits{tt.name: {{Limit: 0}}}.Validate()
			if tt.internal != (fieldOf(err) == "limits."+tt.name) {
				t.Fatalf("Validate: %v", err)
			}
			if err := (quota.Limits{tt.name: nil}).Validate(); err != nil {
				t.Fatalf("Validate of a removal: %v", err)
			}
		})
	}

	svc, _, _, _ := newService(t)
	ctx := context.Background()
	bad := quota.Limits{"reserved_slices": {{Limit: 0}}}
	if _, err := svc.CreateUser(ctx, quota.NewUser{Name: "A", Email: "a@example.com", Limits: bad}); fieldOf(err) != "limits.reserved_slices" {
		t.Fatalf("CreateUser: %v", err)
	}
	u, err := svc.CreateUser(ctx, quota.NewUser{Name: "A", Email: "a@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.SetLimits(ctx, u.ID, bad); fieldOf(err) != "limits.reserved_slices" {
		t.Fatalf("SetLimits: %v", err)
	}
	if _, err := svc.PatchLimits(ctx, u.ID, bad); fieldOf(err) != "limits.reserved_slices" {
		t.Fatalf("PatchLimits: %v", err)
	}
	if _, err := svc.UpdateUser(ctx, u.ID, quota.UserPatch{Limits: bad}); fieldOf(err) != "limits.reserved_slices" {
		t.Fatalf("UpdateUser: %v", err)
	}
	if _, err := svc.CreateToken(ctx, u.ID, quota.NewToken{Limits: bad}); fieldOf(err) != "limits.reserved_slices" {
		t.Fatalf("CreateToken: %v", err)
	}

	// The stores' own fields: the Redis usage hash's "~due", the
	// "<resource>|<period>" counters and their "|s" window starts.
	for _, name := range []string{"~due", "tokens|lifetime", "tokens|minute|s", "|s", "a~b"} {
		if quota.ValidResourceName(name) {
			t.Errorf("%q is a valid resource name", name)
		}
	}
}
