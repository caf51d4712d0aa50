package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tenantquota/caddy-tenant-quota/internal/redistest"
)

// quotaCLI runs "caddy quota args..." against g's admin API and returns
// its output; wantFail expects a non-zero exit.
func quotaCLI(t *testing.T, g *gateway, wantFail bool, args ...string) string {
	t.Helper()
	cmd := exec.Command(caddyBin(), append([]string{"quota"}, args...)...)
	cmd.Env = append(os.Environ(), "TQ_URL="+g.url+"/quota", "TQ_ADMIN_KEY="+adminKey)
	out, err := cmd.CombinedOutput()
	if (err != nil) != wantFail {
		t.Fatalf("caddy quota %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestCLI: the caddy quota subcommands on the real binary, on both stores.
func TestCLI(t *testing.T) {
	t.Parallel()
	if out, err := exec.Command(caddyBin(), "help").CombinedOutput(); err != nil || !strings.Contains(string(out), "quota") {
		t.Fatalf("caddy help does not list quota: %v\n%s", err, out)
	}
	for _, st := range allStores() {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			g := startGateway(t, st.opts(t), strings.TrimPrefix(newBackend(t).URL, "http://"))
			out := quotaCLI(t, g, false, "users", "create", "--name", "Ada", "--email", "ada@example.com", "--external-id", "crm-1", "--limits", `{"messages": 3}`, "--credits", "5", "--token")
			if !strings.Contains(out, "ada@example.com") || !strings.Contains(out, "tq_") {
				t.Fatalf("users create:\n%s", out)
			}
			token := out[strings.Index(out, "tq_"):]
			token = strings.Fields(token)[0]
			var u struct {
				ID      string `json:"id"`
				Status  string `json:"status"`
				Credits int64  `json:"credits"`
			}
			if err := json.Unmarshal([]byte(quotaCLI(t, g, false, "users", "get", "crm-1", "--json")), &u); err != nil || u.Credits != 5 {
				t.Fatalf("users get by external id: %+v %v", u, err)
			}
			if out := quotaCLI(t, g, false, "users", "list"); !strings.Contains(out, u.ID) || !strings.HasPrefix(out, "ID") {
				t.Fatalf("users list:\n%s", out)
			}
			quotaCLI(t, g, false, "users", "update", "ada@example.com", "--name", "Ada L")
			quotaCLI(t, g, false, "limits", "patch", "ada@example.com", `{"tokens": 1000}`)
			if out := quotaCLI(t, g, false, "limits", "get", u.ID); !strings.Contains(out, `"tokens": 1000`) || !strings.Contains(out, `"messages": 3`) {
				t.Fatalf("limits get:\n%s", out)
			}
			quotaCLI(t, g, false, "limits", "set", u.ID, `{"messages": 2}`)
			quotaCLI(t, g, false, "credits", "add", "crm-1", "10")
			wantStatus(t, call(t, "POST", g.url+"/v1/chat", token, map[string]any{}, nil), http.StatusOK)
			if out := quotaCLI(t, g, false, "usage", "crm-1"); !strings.Contains(out, "messages") || !strings.Contains(out, "RESOURCE") {
				t.Fatalf("usage:\n%s", out)
			}
			quotaCLI(t, g, false, "usage", "reset", "crm-1", "messages")
			tok := quotaCLI(t, g, false, "tokens", "create", "crm-1", "--name", "ci", "--scopes", "chat", "--json")
			var created struct{ ID, Token string }
			json.Unmarshal([]byte(tok), &created)
			if out := quotaCLI(t, g, false, "tokens", "list", "crm-1"); !strings.Contains(out, created.ID) {
				t.Fatalf("tokens list:\n%s", out)
			}
			wantStatus(t, call(t, "POST", g.url+"/v1/chat", created.Token, map[string]any{}, nil), http.StatusOK)
			quotaCLI(t, g, false, "tokens", "update", "crm-1", created.ID, "--name", "ci-2", "--limits", `{"messages": 1}`, "--expires", "never")
			wantStatus(t, call(t, "POST", g.url+"/v1/chat", created.Token, map[string]any{}, nil), http.StatusTooManyRequests)
			if out := quotaCLI(t, g, false, "tokens", "get", "crm-1", created.ID, "--json"); !strings.Contains(out, "ci-2") || !strings.Contains(out, `"messages": 1`) || strings.Contains(out, created.Token) {
				t.Fatalf("tokens get:\n%s", out)
			}
			if out := quotaCLI(t, g, true, "tokens", "update", "crm-1", created.ID, "--expires", "yesterday"); !strings.Contains(out, "expiresAt") {
				t.Fatalf("a bad expiry:\n%s", out)
			}
			if out := quotaCLI(t, g, true, "tokens", "update", "crm-1", created.ID); !strings.Contains(out, "nothing to change") {
				t.Fatalf("no change:\n%s", out)
			}
			quotaCLI(t, g, false, "tokens", "revoke", "crm-1", created.ID)
			quotaCLI(t, g, false, "users", "disable", "crm-1")
			wantStatus(t, call(t, "POST", g.url+"/v1/chat", token, map[string]any{}, nil), http.StatusForbidden)
			quotaCLI(t, g, false, "users", "enable", "crm-1")
			if out := quotaCLI(t, g, false, "events", "tail", "--user", "crm-1"); !strings.Contains(out, "user.created") || !strings.Contains(out, "token.revoked") || !strings.Contains(out, "token.updated") {
				t.Fatalf("events tail:\n%s", out)
			}
			// Errors: the problem's detail, and a non-zero exit.
			if out := quotaCLI(t, g, true, "users", "create", "--name", "X", "--email", "not-an-email"); !strings.Contains(out, "email") {
				t.Fatalf("a bad email:\n%s", out)
			}
			if out := quotaCLI(t, g, true, "credits", "add", "crm-1", "0"); !strings.Contains(out, "amount") {
				t.Fatalf("a bad amount:\n%s", out)
			}
			quotaCLI(t, g, false, "users", "delete", "ada@example.com")
			quotaCLI(t, g, true, "users", "get", "ada@example.com")
		})
	}
}

// TestMigrateCommand: a gateway that started on the embedded store moves
// to Redis (and to a Cluster) with caddy quota migrate, and the tenant's
// old token works there, with its usage.
func TestMigrateCommand(t *testing.T) {
	t.Parallel()
	for _, target := range []string{"redis", "cluster"} {
		t.Run(target, func(t *testing.T) {
			t.Parallel()
			be := strings.TrimPrefix(newBackend(t).URL, "http://")
			g := startGateway(t, "", be)
			c := g.tenant(t, map[string]any{"name": "Mig", "email": "mig@example.com", "limits": map[string]any{"messages": 5}})
			for range 2 {
				wantStatus(t, call(t, "POST", g.url+"/v1/chat", c.Token.Token, map[string]any{}, nil), http.StatusOK)
			}
			g.stop(t) // the embedded file is locked while a gateway runs
			var url string
			if target == "redis" {
				url = "redis://" + redistest.Start(t).Addr() + "/0"
			} else {
				url = "redis-cluster://" + strings.Join(redistest.StartCluster(t).Addrs(), ",")
			}
			db := filepath.Join(g.dataDir, "caddy", "tenant_quota", "quota.db")
			for run := range 2 { // idempotent
				cmd := exec.Command(caddyBin(), "quota", "migrate", "--from", db, "--to", url)
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Fatalf("migrate: %v\n%s", err, out)
				}
				want := "users: 1 copied"
				if run == 1 {
					want = "users: 0 copied, 1 already there"
				}
				if !strings.Contains(string(out), want) {
					t.Fatalf("run %d:\n%s", run, out)
				}
			}
			r := startGateway(t, "redis "+url, be)
			wantStatus(t, call(t, "POST", r.url+"/v1/chat", c.Token.Token, map[string]any{}, nil), http.StatusOK)
			if got := r.used(t, c.User.ID, "messages"); got != 3 {
				t.Fatalf("messages on Redis after the move: %d, want 3", got)
			}
		})
	}
}

// TestCLIEventsTailFollow: `caddy quota events tail --follow` prints the
// kept events, then each new one as it is written, every event once
// (before, it printed the last page again every second). On both stores.
func TestCLIEventsTailFollow(t *testing.T) {
	t.Parallel()
	for _, st := range allStores() {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			g := startGateway(t, st.opts(t), strings.TrimPrefix(newBackend(t).URL, "http://"))
			var ids []string
			create := func(i int) {
				t.Helper()
				ids = append(ids, g.tenant(t, map[string]any{"name": "T", "email": fmt.Sprintf("tail%d@example.com", i)}).User.ID)
			}
			create(0)
			create(1)
			out := &syncBuffer{}
			cmd := exec.Command(caddyBin(), "quota", "events", "tail", "--follow", "--json", "--type", "user.created")
			cmd.Env = append(os.Environ(), "TQ_URL="+g.url+"/quota", "TQ_ADMIN_KEY="+adminKey)
			cmd.Stdout, cmd.Stderr = out, out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
			printed := func() map[string]int {
				n := map[string]int{}
				for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
					var e struct{ Subject string }
					if json.Unmarshal([]byte(line), &e) == nil && e.Subject != "" {
						n[e.Subject]++
					}
				}
				return n
			}
			waitPrinted := func(id string) {
				t.Helper()
				deadline := time.Now().Add(15 * time.Second)
				for printed()[id] == 0 {
					if time.Now().After(deadline) {
						t.Fatalf("tail --follow did not print %s's user.created:\n%s", id, out.String())
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
			waitPrinted(ids[1])
			// Each new event shows that the CLI polled again since.
			for i := 2; i < 5; i++ {
				create(i)
				waitPrinted(ids[i])
			}
			n := printed()
			for _, id := range ids {
				if n[id] != 1 {
					t.Errorf("%s's user.created printed %d times", id, n[id])
				}
			}
			if len(n) != len(ids) {
				t.Errorf("printed events of %d users, want %d:\n%s", len(n), len(ids), out.String())
			}
		})
	}
}
