package redisstore

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tenantquota/caddy-tenant-quota/internal/redistest"
	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// interrupt runs at a chosen command: fail makes the first EVAL of
// put_token.lua fail (a lookup key's shard failing over, a node that dies
// between two writes); beforeSetNX runs f just before CreateToken's SETNX
// of the lookup key.
type interrupt struct {
	fail        atomic.Bool
	beforeSetNX atomic.Pointer[func(tok quota.Token)]
}

func (h *interrupt) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *interrupt) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *interrupt) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		args := cmd.Args()
		if len(args) > 1 && (args[0] == "evalsha" || args[0] == "eval") && args[1] == putTokenScript.Hash() && h.fail.CompareAndSwap(true, false) {
			cmd.SetErr(context.DeadlineExceeded)
			return context.DeadlineExceeded
		}
		if f := h.beforeSetNX.Load(); f != nil && cmd.Name() == "set" && len(args) > 2 {
			for _, a := range args {
				if a == "nx" && h.beforeSetNX.CompareAndSwap(f, nil) {
					var tok quota.Token
					data, _ := args[2].([]byte)
					_ = json.Unmarshal(data, &tok)
					(*f)(tok)
				}
			}
		}
		return next(ctx, cmd)
	}
}

// TestTokenChangeHoldsWhateverTheLookupKey: authentication reads a token
// from its user's tokens hash, so a change holds even when the write of
// the lookup key (another slot) fails after it, or lands while the token
// is still being created; a touch repairs the lookup key for older nodes.
// Found by review: the lookup key kept the old limits and expiry for
// good, while every admin read showed the new ones.
func TestTokenChangeHoldsWhateverTheLookupKey(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := srv.Client(t)
	h := &interrupt{}
	c.AddHook(h)
	st, err := New(Options{Client: c, Timeout: redistest.Timeout})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := quota.NewService(quota.Options{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	ctx := context.Background()
	u, err := svc.CreateUser(ctx, quota.NewUser{Name: "N", Email: "n@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	fresh := func() *quota.Service { // a node with nothing cached
		t.Helper()
		n, err := quota.NewService(quota.Options{Store: st})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
	admitted := func(secret string) error {
		n := fresh()
		p, err := n.Authenticate(ctx, secret)
		if err != nil {
			return err
		}
		_, err = n.AdmitToken(ctx, p.User, p.Token, (&quota.Route{}).Plan(quota.MeterUses{}, quota.TokenRequest{}))
		return err
	}

	t.Run("the lookup write fails", func(t *testing.T) {
		tok, err := svc.CreateToken(ctx, u.ID, quota.NewToken{Name: "leaked"})
		if err != nil {
			t.Fatal(err)
		}
		h.fail.Store(true)
		if _, err := svc.UpdateToken(ctx, u.ID, tok.ID, quota.TokenPatch{Limits: quota.Limits{"messages": {{Limit: 0}}}}); err != nil {
			t.Fatalf("UpdateToken: %v", err)
		}
		if h.fail.Load() {
			t.Fatal("the lookup key was not written: the test's interruption did not happen")
		}
		var le *quota.LimitError
		if err := admitted(tok.Secret); !errors.As(err, &le) || le.State.Token != tok.ID {
			t.Fatalf("a token capped at 0 on a fresh node: %v, want its limit", err)
		}
		// A touch brings the lookup key up to date (for older nodes).
		if err := st.TouchTokens(ctx, map[string]time.Time{quota.HashTokenSecret(tok.Secret): time.Now()}); err != nil {
			t.Fatal(err)
		}
		raw, err := c.Get(ctx, st.tokKey(quota.HashTokenSecret(tok.Secret))).Bytes()
		if err != nil {
			t.Fatal(err)
		}
		var lookup quota.Token
		if err := json.Unmarshal(raw, &lookup); err != nil || lookup.Revision != 1 || lookup.LastUsedAt == nil {
			t.Fatalf("the lookup key after a touch: %s %v", raw, err)
		}
		// A revocation whose lookup-key delete is lost still holds.
		if _, err := c.HDel(ctx, st.tokensKey(u.ID), tok.ID).Result(); err != nil {
			t.Fatal(err)
		}
		if err := admitted(tok.Secret); !errors.Is(err, quota.ErrUnauthenticated) {
			t.Fatalf("a token gone from its user's hash: %v, want unauthenticated", err)
		}
	})

	t.Run("a change while the token is created", func(t *testing.T) {
		f := func(tok quota.Token) {
			if _, err := svc.UpdateToken(ctx, u.ID, tok.ID, quota.TokenPatch{Limits: quota.Limits{"messages": {{Limit: 0}}}}); err != nil {
				t.Errorf("PATCH during create: %v", err)
			}
		}
		h.beforeSetNX.Store(&f)
		tok, err := svc.CreateToken(ctx, u.ID, quota.NewToken{})
		if err != nil {
			t.Fatal(err)
		}
		if h.beforeSetNX.Load() != nil {
			t.Fatal("the change did not run during the create")
		}
		byHash, err := st.GetTokenByHash(ctx, quota.HashTokenSecret(tok.Secret))
		if err != nil || byHash.Revision != 1 {
			t.Fatalf("authentication reads %+v %v, want revision 1", byHash, err)
		}
		var le *quota.LimitError
		if err := admitted(tok.Secret); !errors.As(err, &le) {
			t.Fatalf("a token capped at 0 during its creation: %v", err)
		}
	})
}
