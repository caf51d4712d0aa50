package caddymodule

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/tenantquota/caddy-tenant-quota/admin"
	"github.com/tenantquota/caddy-tenant-quota/internal/quotatest"
	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/boltstore"
)

const cliKey = "cli-test-admin-key-0123456789"

// cliEnv is `caddy quota` in process, against the admin API on a real
// embedded store behind an httptest server.
type cliEnv struct {
	t   *testing.T
	url string
	svc *quota.Service
}

func newCLIEnv(t *testing.T) *cliEnv {
	t.Helper()
	_, svc := quotatest.Embedded(t)
	h, err := admin.New(admin.Options{Service: svc, Keys: []string{cliKey}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.StripPrefix("/quota", h))
	t.Cleanup(srv.Close)
	return &cliEnv{t: t, url: srv.URL + "/quota", svc: svc}
}

// run runs `caddy quota args...` and returns what it printed; wantErr says
// whether it must fail (its error is then part of the output).
func (e *cliEnv) run(wantErr bool, args ...string) string {
	e.t.Helper()
	cmd := &cobra.Command{Use: "quota", SilenceErrors: true}
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	quotaCommand(cmd)
	cmd.SetArgs(append([]string{"--url", e.url, "--key", cliKey}, args...))
	err := cmd.Execute()
	if (err != nil) != wantErr {
		e.t.Fatalf("quota %s: error %v, want error %v; output:\n%s", strings.Join(args, " "), err, wantErr, out.String())
	}
	if err != nil {
		out.WriteString(err.Error())
	}
	return out.String()
}

func mustContain(t *testing.T, what, out string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Fatalf("%s: no %q in\n%s", what, w, out)
		}
	}
}

// TestCLIInProcess: every `caddy quota` subcommand against a real admin
// API: tables, --json, users named by id, email or external id, and
// errors that print the problem's detail and fields.
func TestCLIInProcess(t *testing.T) {
	e := newCLIEnv(t)
	out := e.run(false, "users", "create", "--name", "Ada", "--email", "ada@example.com", "--external-id", "crm-1",
		"--limits", `{"messages": 10}`, "--credits", "5", "--token")
	mustContain(t, "users create", out, "ada@example.com", "token (shown once):", quota.TokenPrefix)
	var created struct {
		User  quota.User
		Token struct{ Token string }
	}
	if err := json.Unmarshal([]byte(e.run(false, "users", "create", "--name", "Bob", "--email", "bob@example.com", "--token", "--json")), &created); err != nil || created.Token.Token == "" {
		t.Fatalf("users create --json: %+v %v", created, err)
	}
	mustContain(t, "users list", e.run(false, "users", "list"), "ada@example.com", "bob@example.com", "2 users")
	mustContain(t, "users get by email", e.run(false, "users", "get", "ada@example.com"), "crm-1", "active")
	mustContain(t, "users get by external id", e.run(false, "users", "get", "crm-1"), "ada@example.com")
	mustContain(t, "users get by id", e.run(false, "users", "get", created.User.ID, "--json"), `"email": "bob@example.com"`)
	mustContain(t, "users update", e.run(false, "users", "update", "crm-1", "--name", "Ada L.", "--limits", `{"files": 3}`), "Ada L.")
	mustContain(t, "users disable", e.run(false, "users", "disable", "crm-1"), "disabled")
	mustContain(t, "users enable", e.run(false, "users", "enable", "crm-1"), "active")

	mustContain(t, "limits get", e.run(false, "limits", "get", "crm-1"), `"messages": 10`, `"files": 3`)
	mustContain(t, "limits patch", e.run(false, "limits", "patch", "crm-1", `{"tokens": 1000}`), `"tokens": 1000`, `"messages": 10`)
	out = e.run(false, "limits", "set", "crm-1", `{"messages": 2}`)
	if strings.Contains(out, "tokens") || !strings.Contains(out, `"messages": 2`) {
		t.Fatalf("limits set replaces:\n%s", out)
	}
	mustContain(t, "limits set with bad JSON", e.run(true, "limits", "set", "crm-1", `{`), "limits must be JSON")

	tok := e.run(false, "tokens", "create", "crm-1", "--name", "ci", "--scopes", "chat,usage.read", "--expires", "2099-01-01T00:00:00Z", "--json")
	var issued struct{ ID, Token string }
	if err := json.Unmarshal([]byte(tok), &issued); err != nil || issued.ID == "" {
		t.Fatalf("tokens create: %s %v", tok, err)
	}
	mustContain(t, "tokens list", e.run(false, "tokens", "list", "ada@example.com"), issued.ID, "ci")
	mustContain(t, "tokens update", e.run(false, "tokens", "update", "crm-1", issued.ID, "--name", "ci-2", "--expires", "never", "--limits", `{"messages": 1}`), "ci-2", `{"messages":1}`)
	out = e.run(false, "tokens", "get", "crm-1", issued.ID)
	mustContain(t, "tokens get", out, "ci-2", "chat")
	if strings.Contains(out, issued.Token) {
		t.Fatalf("tokens get shows the secret:\n%s", out)
	}
	mustContain(t, "tokens update with nothing", e.run(true, "tokens", "update", "crm-1", issued.ID), "nothing to change")
	mustContain(t, "tokens update with bad limits", e.run(true, "tokens", "update", "crm-1", issued.ID, "--limits", "x"), "--limits must be JSON")
	mustContain(t, "tokens update with a bad expiry", e.run(true, "tokens", "update", "crm-1", issued.ID, "--expires", "soon"), "expiresAt")
	mustContain(t, "tokens revoke", e.run(false, "tokens", "revoke", "crm-1", issued.ID), "done")

	// The disable zeroed Ada's 5 credits: 10 now.
	mustContain(t, "credits add", e.run(false, "credits", "add", "crm-1", "10"), "ada@example.com", "10")
	mustContain(t, "credits add, bad amount", e.run(true, "credits", "add", "crm-1", "0"), "amount")
	mustContain(t, "credits add, not a number", e.run(true, "credits", "add", "crm-1", "ten"), "ten")
	mustContain(t, "usage", e.run(false, "usage", "crm-1"), "RESOURCE", "messages")
	mustContain(t, "usage reset one", e.run(false, "usage", "reset", "crm-1", "messages"), "messages")
	mustContain(t, "usage reset all", e.run(false, "usage", "reset", "crm-1"), "messages")

	out = e.run(false, "events", "tail", "--user", "crm-1")
	mustContain(t, "events tail", out, "user.created", "user.disabled", "token.created", "token.updated", "token.revoked", "credits.added", "usage.reset")
	if n := strings.Count(out, "token.updated"); n != 1 {
		t.Fatalf("events tail printed token.updated %d times:\n%s", n, out)
	}
	mustContain(t, "events tail --type --json", e.run(false, "events", "tail", "--type", "token.", "--json"), `"type":"token.created"`)

	// Errors: the detail and the fields, exit status 1.
	mustContain(t, "a bad email", e.run(true, "users", "create", "--name", "X", "--email", "nope"), "email")
	mustContain(t, "an unknown email", e.run(true, "users", "get", "who@example.com"), "no user with email who@example.com")
	mustContain(t, "an unknown id", e.run(true, "users", "get", quota.NewID()), "not found")
	mustContain(t, "bad user limits", e.run(true, "users", "create", "--name", "Y", "--email", "y@example.com", "--limits", "[1]"), "limits")

	mustContain(t, "users delete", e.run(false, "users", "delete", "ada@example.com"), "done")
	e.run(true, "users", "get", "ada@example.com")
}

// TestCLIWithoutKeyOrServer: no admin key, a wrong key and no server are
// errors that say so.
func TestCLIWithoutKeyOrServer(t *testing.T) {
	e := newCLIEnv(t)
	cmd := &cobra.Command{Use: "quota", SilenceErrors: true}
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	quotaCommand(cmd)
	cmd.SetArgs([]string{"--url", e.url, "--key", "", "users", "list"})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "TQ_ADMIN_KEY") {
		t.Fatalf("no key: %v", err)
	}
	wrong := &cliEnv{t: t, url: e.url}
	cmd = &cobra.Command{Use: "quota", SilenceErrors: true}
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	quotaCommand(cmd)
	cmd.SetArgs([]string{"--url", wrong.url, "--key", "not-the-key-0123456789", "users", "list"})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "not a valid admin key") {
		t.Fatalf("a wrong key: %v", err)
	}
	cmd = &cobra.Command{Use: "quota", SilenceErrors: true}
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	quotaCommand(cmd)
	cmd.SetArgs([]string{"--url", "http://127.0.0.1:1/quota", "--key", cliKey, "users", "list"})
	if err := cmd.Execute(); err == nil {
		t.Fatal("no server: no error")
	}
}

// TestCLIMigrateInProcess: caddy quota migrate between two embedded files
// copies users and tokens (the token still authenticates on the copy).
func TestCLIMigrateInProcess(t *testing.T) {
	dir := t.TempDir()
	from, to := filepath.Join(dir, "from.db"), filepath.Join(dir, "to.db")
	src, err := boltstore.Open(boltstore.Options{Path: from})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := quota.NewService(quota.Options{Store: src})
	if err != nil {
		t.Fatal(err)
	}
	u, err := svc.CreateUser(t.Context(), quota.NewUser{Name: "M", Email: "m@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := svc.CreateToken(t.Context(), u.ID, quota.NewToken{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Close()
	src.Close()

	cmd := migrateCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs([]string{"--from", from, "--to", to})
	if err := cmd.Execute(); err != nil {
		t.Fatalf("migrate: %v\n%s", err, out.String())
	}
	mustContain(t, "migrate", out.String(), "users: 1 copied", "tokens: 1 copied")
	dst, err := boltstore.Open(boltstore.Options{Path: to})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	got, err := dst.GetTokenByHash(t.Context(), quota.HashTokenSecret(tok.Secret))
	if err != nil || got.UserID != u.ID {
		t.Fatalf("the token on the copy: %+v %v", got, err)
	}
	cmd = migrateCommand()
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs([]string{"--from", from})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "--to is required") {
		t.Fatalf("migrate without --to: %v", err)
	}
}
