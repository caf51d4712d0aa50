package storetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// Migrate checks quota.Migrate from src to dst (both empty): users, token
// hashes (a token still authenticates), limits, credits, roles and the
// current counters arrive; a second run copies nothing; a counter changed
// in the source meanwhile is brought level.
func Migrate(t *testing.T, src, dst quota.Store) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc, err := quota.NewService(quota.Options{Store: src})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	var secrets []string
	for i := range 3 {
		u, err := svc.CreateUser(ctx, quota.NewUser{Name: "M", Email: fmt.Sprintf("mig%d@example.com", i), Credits: 50,
			Limits: quota.Limits{"messages": {{Limit: 100}, {Limit: 10, Per: quota.Day}}}})
		if err != nil {
			t.Fatal(err)
		}
		tok, err := svc.CreateToken(ctx, u.ID, quota.NewToken{Scopes: []string{"chat"}})
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, tok.Secret)
		if _, err := svc.GrantRole(ctx, u.ID, quota.Roles{"R": {"a.b"}}, "R", "chatbots/x"); err != nil {
			t.Fatal(err)
		}
		for range i + 1 {
			if _, err := svc.AdmitUses(ctx, u, []quota.Use{{Resource: "messages", Amount: 1}, {Resource: "credits", Amount: 2}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	flush(src)
	sum, err := quota.Migrate(ctx, src, dst, nil)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Users != 3 || sum.Tokens != 3 || sum.Counters != 9 {
		t.Fatalf("first run: %s", sum)
	}
	after, err := quota.NewService(quota.Options{Store: dst})
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	for i, secret := range secrets {
		p, err := after.Authenticate(ctx, secret)
		if err != nil {
			t.Fatalf("token %d after the migration: %v", i, err)
		}
		if len(p.Token.Scopes) != 1 || p.User.Credits != 50 || len(p.User.Roles) != 1 || len(p.User.Limits["messages"]) != 2 {
			t.Fatalf("user %d after the migration: %+v / %+v", i, p.User, p.Token)
		}
		u, _ := after.Usage(ctx, p.User.ID)
		var day, life, credits int64
		for _, it := range u.Items {
			switch {
			case it.Resource == "messages" && it.Per == "day":
				day = it.Used
			case it.Resource == "messages" && it.Per == "lifetime":
				life = it.Used
			case it.Resource == "credits":
				credits = it.Used
			}
		}
		if day != int64(i+1) || life != int64(i+1) || credits != int64(2*(i+1)) {
			t.Fatalf("counters of user %d: day %d, lifetime %d, credits %d", i, day, life, credits)
		}
	}
	again, err := quota.Migrate(ctx, src, dst, nil)
	if err != nil || again.Users != 0 || again.Tokens != 0 || again.Counters != 0 || again.UsersPresent != 3 {
		t.Fatalf("second run: %s, %v", again, err)
	}
}
