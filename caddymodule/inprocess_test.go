package caddymodule

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/tenantquota/caddy-tenant-quota/admin"
)

const inProcessKey = "in-process-admin-key-0123456789"

// inProcess is Caddy itself, in this test process: a Caddyfile adapted
// and loaded as `caddy run` would, with the tenant_quota app on the
// embedded store, the admin API, self-service usage, meters, credits,
// roles and an LLM route in front of a literal backend.
type inProcess struct {
	url     string
	admin   *admin.Client
	backend atomic.Int64 // requests the backend served
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func startInProcess(t *testing.T) *inProcess {
	t.Helper()
	ip := &inProcess{}
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ip.backend.Add(1)
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		if strings.HasPrefix(r.URL.Path, "/v1/files") {
			fmt.Fprintf(w, `{"id":"file-%d"}`, ip.backend.Load())
			return
		}
		if r.Header.Get("X-Boom") != "" {
			panic(http.ErrAbortHandler) // the backend drops the connection
		}
		_ = body
		fmt.Fprint(w, `{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}`)
	}))
	t.Cleanup(backend.Close)
	addr := freeAddr(t)
	dir := t.TempDir()
	cf := fmt.Sprintf(`{
	admin off
	storage file_system %[1]s
	tenant_quota {
		db_path %[2]s
		admin_key %[3]s
		role Chatter chat
	}
}
http://%[4]s {
	handle_path /quota/* {
		tenant_quota_admin
	}
	handle /usage {
		tenant_quota_usage
	}
	handle /v1/files* {
		@newFile method POST
		tenant_quota {
			meter files @newFile +1 key {http.quota.response.body.id}
		}
		reverse_proxy %[5]s
	}
	handle /v1/chat/completions {
		tenant_quota {
			require chat
			credits messages 2
		}
		reverse_proxy %[5]s
	}
	handle {
		tenant_quota
		reverse_proxy %[5]s
	}
}
`, filepath.Join(dir, "caddy"), filepath.Join(dir, "q.db"), inProcessKey, addr, strings.TrimPrefix(backend.URL, "http://"))
	adapter := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}
	cfg, warnings, err := adapter.Adapt([]byte(cf), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	if len(warnings) > 0 {
		t.Fatalf("adapt warnings: %v", warnings)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	ip.url = "http://" + addr
	ip.admin = &admin.Client{URL: ip.url + "/quota", Key: inProcessKey}
	return ip
}

// call sends one request and returns its status and body.
func (ip *inProcess) call(t *testing.T, method, path, token, body string, header ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, ip.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (ip *inProcess) tenant(t *testing.T, body string) (id, token string) {
	t.Helper()
	data, err := ip.admin.Do(t.Context(), "POST", "/users", json.RawMessage(body))
	if err != nil {
		t.Fatal(err)
	}
	var out struct {
		User  struct{ ID string }
		Token struct{ Token string }
	}
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatal(err)
	}
	return out.User.ID, out.Token.Token
}

// TestInProcessCaddy: the handlers provisioned by Caddy from a Caddyfile,
// every tenant answer on a real request: 401 (none, malformed, revoked),
// 403 (disabled, no role, unmetered), 402 (credits), 429 (a cap, with its
// headers), 400 (a bad body), an LLM call metered from the backend's
// usage, a meter keyed by the response, self-service usage, and a backend
// that drops the connection (settled all the same).
func TestInProcessCaddy(t *testing.T) {
	ip := startInProcess(t)
	chat := `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":50}`

	if st, body := ip.call(t, "POST", "/v1/chat/completions", "", chat); st != 401 || !strings.Contains(body, "missing API key") {
		t.Fatalf("no token: %d %s", st, body)
	}
	if st, _ := ip.call(t, "POST", "/v1/chat/completions", "tq_not-a-token", chat); st != 401 {
		t.Fatalf("a malformed token: %d", st)
	}

	id, tok := ip.tenant(t, `{"name":"Ada","email":"ada@example.com","limits":{"messages":3,"tokens":{"limit":100000,"per":"day"}},"credits":4,"issueToken":true}`)
	if st, body := ip.call(t, "POST", "/v1/chat/completions", tok, chat); st != 403 || !strings.Contains(body, "permission chat") {
		t.Fatalf("no role: %d %s", st, body)
	}
	if _, err := ip.admin.Do(t.Context(), "POST", "/users/"+id+"/roles", map[string]string{"role": "Chatter", "resource": "*"}); err != nil {
		t.Fatal(err)
	}
	for i := range 2 { // 2 credits a message, 4 granted
		if st, body := ip.call(t, "POST", "/v1/chat/completions", tok, chat); st != 200 {
			t.Fatalf("chat %d: %d %s", i, st, body)
		}
	}
	if st, body := ip.call(t, "POST", "/v1/chat/completions", tok, chat); st != 402 || !strings.Contains(body, "credits") {
		t.Fatalf("out of credits: %d %s", st, body)
	}
	// The default route: messages capped at 3 (2 used).
	if st, _ := ip.call(t, "POST", "/v1/other", tok, `{}`); st != 200 {
		t.Fatalf("the default route: %d", st)
	}
	req, _ := http.NewRequest("POST", ip.url+"/v1/other", strings.NewReader(`{}`))
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" && resp.Header.Get("RateLimit-Policy") == "" {
		t.Fatalf("over the cap: %d %v", resp.StatusCode, resp.Header)
	}

	var usage struct {
		Items []struct {
			Resource, Per string
			Used          int64
		}
	}
	st, body := ip.call(t, "GET", "/usage", tok, "")
	if st != 200 || json.Unmarshal([]byte(body), &usage) != nil {
		t.Fatalf("self-service usage: %d %s", st, body)
	}
	got := map[string]int64{}
	for _, it := range usage.Items {
		got[it.Resource+"/"+it.Per] = it.Used
	}
	if got["messages/lifetime"] != 3 || got["tokens/day"] != 34 || got["credits/lifetime"] != 4 {
		t.Fatalf("usage after 2 LLM calls and 1 plain request: %v (%s)", got, body)
	}
	if st, _ := ip.call(t, "POST", "/usage", tok, ""); st != 405 {
		t.Fatalf("POST /usage: %d", st)
	}

	// A meter keyed by the response: a created file counts once.
	bob, bobTok := ip.tenant(t, `{"name":"Bob","email":"bob@example.com","limits":{"files":1},"issueToken":true}`)
	if st, body := ip.call(t, "POST", "/v1/files", bobTok, `{}`); st != 200 {
		t.Fatalf("a file: %d %s", st, body)
	}
	if st, _ := ip.call(t, "POST", "/v1/files", bobTok, `{}`); st != 429 {
		t.Fatalf("a second file over the cap of 1: %d", st)
	}
	if st, _ := ip.call(t, "GET", "/v1/files", bobTok, ""); st != 200 {
		t.Fatalf("listing files is not metered: %d", st)
	}

	// A body the gateway cannot bound is a 400, and reaches nobody.
	before := ip.backend.Load()
	if st, body := ip.call(t, "POST", "/v1/responses", bobTok, `{"model":"m","input":"x","max_output_tokens":-1}`); st != 400 {
		t.Fatalf("a negative maximum: %d %s", st, body)
	}
	if ip.backend.Load() != before {
		t.Fatal("a refused body reached the backend")
	}
	// A backend that drops the connection mid-answer: the request is
	// settled (the reservation ends).
	if st, _ := ip.call(t, "POST", "/v1/chat/completions", bobTok, chat, "X-Boom", "1"); st == 200 {
		t.Fatal("a dropped answer came back 200")
	}

	// Disabled, then revoked: 403, then 401.
	if _, err := ip.admin.Do(t.Context(), "PATCH", "/users/"+bob, map[string]string{"status": "disabled"}); err != nil {
		t.Fatal(err)
	}
	if st, body := ip.call(t, "GET", "/v1/files", bobTok, ""); st != 403 || !strings.Contains(body, "disabled") {
		t.Fatalf("disabled: %d %s", st, body)
	}
	if _, err := ip.admin.Do(t.Context(), "DELETE", "/users/"+bob, nil); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		st, _ := ip.call(t, "GET", "/v1/files", bobTok, "")
		if st == 401 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a deleted user's token: %d", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
