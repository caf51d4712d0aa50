package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tenantquota/caddy-tenant-quota/internal/quotatest"
	"github.com/tenantquota/caddy-tenant-quota/internal/strictjson"
	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// harness is the tenant_quota handler over a real embedded store, in
// front of a literal backend: one that reads only its own API's output
// field and the first of duplicate keys, ignores unknown fields, and
// spends all it may (unboundedOutput when the body names no maximum it
// reads), as vLLM, llama.cpp and Ollama do.
type harness struct {
	t      *testing.T
	svc    *quota.Service
	h      *Handler
	secret string
	user   string

	mu       sync.Mutex
	served   int   // requests the backend received
	spent    int64 // tokens the backend spent, by its own reading
	received []string
}

const unboundedOutput = 100_000

func newHarness(t *testing.T, limits quota.Limits, configure func(*Handler, *App)) *harness {
	t.Helper()
	store, svc := quotatest.Embedded(t)
	return newHarnessOn(t, store, svc, limits, configure)
}

// newHarnessOn is newHarness over a given store and its service.
func newHarnessOn(t *testing.T, store quota.Store, svc *quota.Service, limits quota.Limits, configure func(*Handler, *App)) *harness {
	t.Helper()
	ctx := context.Background()
	u, err := svc.CreateUser(ctx, quota.NewUser{Name: "T", Email: "t@example.com", Limits: limits})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := svc.CreateToken(ctx, u.ID, quota.NewToken{})
	if err != nil {
		t.Fatal(err)
	}
	app := &App{service: svc, shared: &sharedStore{store: store, service: svc}, logger: zap.NewNop(), OnStoreError: StoreErrorDeny}
	on := true
	h := &Handler{app: app, logger: zap.NewNop(), TokenHeaders: DefaultTokenHeaders, tokenHeaders: defaultTokenHeaders,
		UsageHeader: DefaultUsageHeader, Tokens: &on, IncludeUsage: &on, absurdLogged: new(atomic.Bool), headerWarned: new(atomic.Bool),
		DefaultMaxTokens: DefaultMaxTokens, MaxRequestBody: DefaultMaxRequestBody, Reserve: string(quota.ReserveStrict)}
	if configure != nil {
		configure(h, app)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	h.route = quota.Route{Reserve: quota.ReservePolicy(h.Reserve), DefaultMaxTokens: h.DefaultMaxTokens, Credits: h.Credits,
		ModelGroups: app.ModelGroups, UnmatchedModels: app.UnmatchedModels}.Prepared()
	return &harness{t: t, svc: svc, h: h, secret: tok.Secret, user: u.ID}
}

// backend serves as the literal backend described on harness.
func (hs *harness) backend(w http.ResponseWriter, r *http.Request) error {
	body, _ := io.ReadAll(r.Body)
	api := quota.APIOf(r.URL.Path)
	own := map[quota.API]string{quota.APIChat: "max_tokens", quota.APICompletions: "max_tokens", quota.APIMessages: "max_tokens", quota.APIResponses: "max_output_tokens"}[api]
	out := int64(unboundedOutput)
	if v, ok := strictjson.First(body, own); ok {
		fmt.Sscan(string(v), &out)
	}
	if api == quota.APIEmbeddings {
		out = 0
	}
	if v, ok := strictjson.First(body, "n"); ok && api == quota.APIChat {
		var n int64
		fmt.Sscan(string(v), &n)
		out *= max(n, 1)
	}
	in := int64(1)
	hs.mu.Lock()
	hs.served++
	hs.spent += in + out
	hs.received = append(hs.received, string(body))
	hs.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(map[string]any{"usage": map[string]int64{"prompt_tokens": in, "completion_tokens": out, "input_tokens": in, "output_tokens": out}})
}

// do sends one request and returns its response.
func (hs *harness) do(method, path, body string, header ...string) *httptest.ResponseRecorder {
	hs.t.Helper()
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	r.Header.Set("Authorization", "Bearer "+hs.secret)
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
	w := httptest.NewRecorder()
	if err := hs.h.ServeHTTP(w, r, caddyhttp.HandlerFunc(hs.backend)); err != nil {
		hs.t.Fatalf("%s %s: %v", method, path, err)
	}
	return w
}

// errorCode is the OpenAI error code of a refusal.
func errorCode(w *httptest.ResponseRecorder) string {
	var e openAIError
	_ = json.Unmarshal(w.Body.Bytes(), &e)
	return e.Error.Code
}

// TestHostileBodiesStayUnderTheCap: bodies a literal backend reads
// differently from a lenient parser (another API's output field, duplicate
// keys, odd path spellings) are refused or bounded: the backend's own
// count never passes the cap, and nothing refused reaches it.
func TestHostileBodiesStayUnderTheCap(t *testing.T) {
	const capTokens = 10_000
	for _, tt := range []struct {
		name, path, body string
		status           int
		code             string
	}{
		{"chat with the Responses field", "/v1/chat/completions", `{"model":"m","messages":[],"max_output_tokens":1}`, 400, "invalid_value"},
		{"responses with max_tokens", "/v1/responses", `{"model":"m","input":"hi","max_tokens":1}`, 400, "invalid_value"},
		{"responses with max_completion_tokens", "/v1/responses", `{"model":"m","input":"hi","max_completion_tokens":1}`, 400, "invalid_value"},
		{"completions with max_output_tokens", "/v1/completions", `{"model":"m","prompt":"hi","max_output_tokens":1}`, 400, "invalid_value"},
		{"duplicate max_tokens", "/v1/chat/completions", `{"model":"m","messages":[],"max_tokens":900000,"max_tokens":5}`, 400, "invalid_value"},
		{"duplicate n", "/v1/chat/completions", `{"model":"m","messages":[],"n":64,"n":1,"max_tokens":100}`, 400, "invalid_value"},
		{"escaped duplicate", "/v1/chat/completions", `{"model":"m","messages":[],"max_tokens":900000,"max\u005ftokens":5}`, 400, "invalid_value"},
		{"model a number", "/v1/chat/completions", `{"model":5,"messages":[]}`, 400, "invalid_value"},
		{"capitals in the path", "/v1/Chat/Completions", `{"model":"m","messages":[],"max_output_tokens":1}`, 400, "invalid_value"},
		{"dot segment", "/v1/chat/completions/.", `{"model":"m","messages":[],"max_output_tokens":1}`, 400, "invalid_path"},
		{"dot dot segment", "/v1/x/../chat/completions", `{"model":"m","messages":[]}`, 400, "invalid_path"},
		{"matrix parameter", "/v1/chat/completions;x=1", `{"model":"m","messages":[],"max_output_tokens":1}`, 400, "invalid_value"},
		{"trailing slash", "/v1/responses/", `{"model":"m","input":"hi","max_tokens":1}`, 400, "invalid_value"},
		{"background response", "/v1/responses", `{"model":"m","input":"hi","background":true,"max_output_tokens":10}`, 403, "endpoint_not_metered"},
		{"batches", "/v1/batches", `{"input_file_id":"f","endpoint":"/v1/chat/completions"}`, 403, "endpoint_not_metered"},
		{"anthropic batches", "/v1/messages/batches", `{"requests":[]}`, 403, "endpoint_not_metered"},
		{"assistants run", "/v1/threads/t1/runs", `{"assistant_id":"a"}`, 403, "endpoint_not_metered"},
		{"thread and run", "/v1/threads/runs", `{"assistant_id":"a"}`, 403, "endpoint_not_metered"},
		{"realtime session", "/v1/realtime/sessions", `{}`, 403, "endpoint_not_metered"},
		{"fine-tuning job", "/v1/Fine_Tuning/Jobs", `{}`, 403, "endpoint_not_metered"},
		// Served, and bounded: the gateway writes the maximum the backend reads.
		{"chat without a maximum", "/v1/chat/completions", `{"model":"m","messages":[]}`, 200, ""},
		// A backend that reads only max_tokens gets the maximum there.
		{"chat with max_completion_tokens", "/v1/chat/completions", `{"model":"m","messages":[],"max_completion_tokens":1}`, 200, ""},
		{"chat with both", "/v1/chat/completions", `{"model":"m","messages":[],"max_completion_tokens":1,"max_tokens":300}`, 200, ""},
		{"odd path without a maximum", "/v1/Chat/Completions/", `{"model":"m","messages":[]}`, 200, ""},
		{"responses without a maximum", "/v1/responses;a=b", `{"model":"m","input":"x"}`, 200, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			hs := newHarness(t, quota.Limits{"tokens": {{Limit: capTokens}}}, nil)
			for range 3 {
				w := hs.do("POST", tt.path, tt.body)
				if w.Code != tt.status || errorCode(w) != tt.code {
					t.Fatalf("%d %s, want %d %s: %s", w.Code, errorCode(w), tt.status, tt.code, w.Body)
				}
			}
			if tt.status != 200 && hs.served != 0 {
				t.Fatalf("a refused request reached the backend")
			}
			if hs.spent > capTokens {
				t.Fatalf("the backend spent %d tokens against a cap of %d: %q", hs.spent, capTokens, hs.received)
			}
		})
	}
}

// TestAllowUnmetered: an operator may allow an unmetered endpoint by name.
func TestAllowUnmetered(t *testing.T) {
	hs := newHarness(t, nil, func(h *Handler, _ *App) { h.AllowUnmetered = []string{quota.UnmeteredBatches} })
	if w := hs.do("POST", "/v1/batches", `{}`); w.Code != 200 {
		t.Fatalf("allowed batches: %d %s", w.Code, w.Body)
	}
	// An extended CONNECT (HTTP/2 and /3 WebSockets) is an upgrade too.
	if w := hs.do("CONNECT", "/v1/realtime", ``); w.Code != 403 || errorCode(w) != "endpoint_not_metered" {
		t.Fatalf("extended CONNECT to realtime: %d %s", w.Code, w.Body)
	}
	if w := hs.do("POST", "/v1/threads/runs", `{}`); w.Code != 403 {
		t.Fatalf("assistants not allowed: %d", w.Code)
	}
	hs = newHarness(t, nil, func(h *Handler, _ *App) { h.Reserve = string(quota.ReserveEstimate) })
	if w := hs.do("POST", "/v1/batches", `{}`); w.Code != 200 {
		t.Fatalf("reserve estimate: %d", w.Code)
	}
	bad := &Handler{AllowUnmetered: []string{"everything"}}
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "everything") {
		t.Fatalf("Validate: %v", err)
	}
}

// TestModelSpellings: with model groups, a tenant whose premium limit is 0
// is not served a premium model spelled another way, nor a model in no
// group, nor a model that is not a string.
func TestModelSpellings(t *testing.T) {
	groups := quota.ModelGroups{
		{Name: "small", Patterns: []string{"gpt-4o-mini*", "claude-haiku-*"}},
		{Name: "premium", Patterns: []string{"gpt-4o*", "chatgpt-4o-*", "o1*", "claude-opus-*", "claude-sonnet-*"}},
	}
	hs := newHarness(t, quota.Limits{"tokens.premium": {{Limit: 0}}, "tokens": {{Limit: 1_000_000}}}, func(_ *Handler, a *App) { a.ModelGroups = groups })
	for _, model := range []string{`"gpt-4o-2024-08-06"`, `"chatgpt-4o-latest"`, `"GPT-4o"`, `" gpt-4o"`, `"Claude-Opus-4"`, `"llama-3"`, `5`, `null`} {
		w := hs.do("POST", "/v1/chat/completions", `{"model":`+model+`,"messages":[],"max_tokens":5}`)
		if w.Code != 403 && w.Code != 400 {
			t.Errorf("model %s: %d %s", model, w.Code, w.Body)
		}
	}
	if w := hs.do("POST", "/v1/chat/completions", `{"model":"GPT-4o-mini","messages":[],"max_tokens":5}`); w.Code != 200 {
		t.Fatalf("a small model: %d %s", w.Code, w.Body)
	}
	if hs.served != 1 {
		t.Fatalf("the backend served %d requests, want 1", hs.served)
	}
}

// TestInternalResourcesRefused: meters and prices may not name the
// gateway's own counters.
func TestInternalResourcesRefused(t *testing.T) {
	for _, h := range []*Handler{
		{Meters: []Meter{{Resource: "reserved_slices", Mode: MeterRequest, Amount: 1}}},
		{Credits: []quota.CreditRate{{Resource: "reserved_tokens", Credits: 1}}},
	} {
		if err := h.Validate(); err == nil {
			t.Errorf("%+v validated", h)
		}
	}
}

// TestModelInThePath: Azure-style routes name the model (the deployment)
// in the path, and such a backend ignores the body's model: the path's is
// the one charged, and a body naming another is refused.
func TestModelInThePath(t *testing.T) {
	groups := quota.ModelGroups{
		{Name: "small", Patterns: []string{"gpt-4o-mini*"}},
		{Name: "premium", Patterns: []string{"gpt-4o*"}},
	}
	hs := newHarness(t, quota.Limits{"tokens.premium": {{Limit: 0}}, "tokens": {{Limit: 1_000_000}}}, func(_ *Handler, a *App) { a.ModelGroups = groups })
	for _, tc := range []struct{ path, body string }{
		{"/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21", `{"model":"gpt-4o-mini","messages":[],"max_tokens":5}`},
		{"/openai/deployments/gpt-4o/chat/completions", `{"messages":[],"max_tokens":5}`},
		{"/openai/Deployments/GPT-4o/chat/completions", `{"messages":[],"max_tokens":5}`},
		{"/openai/deployments/gpt-4o/completions", `{"prompt":"hi","max_tokens":5}`},
		{"/openai/deployments/gpt-4o/embeddings", `{"model":"gpt-4o-mini","input":"hi"}`},
		// Paths a backend could read as another deployment.
		{"/openai/deployments//gpt-4o-mini/chat/completions", `{"messages":[],"max_tokens":5}`},
		{"/openai/deployments/gpt-4o-mini//chat/completions", `{"messages":[],"max_tokens":5}`},
		{"/x/deployments/gpt-4o-mini/openai/deployments/gpt-4o/chat/completions", `{"messages":[],"max_tokens":5}`},
		{"/openai/deployments/gpt-4o/..;/gpt-4o-mini/chat/completions", `{"messages":[],"max_tokens":5}`},
		{"/openai/deployments/%20gpt-4o-mini%20/chat/completions", `{"messages":[],"max_tokens":5}`},
		{"/openai/deployments/gpt-4o-mini;x/chat/completions", `{"messages":[],"max_tokens":5}`},
		{"/openai/deployments/gpt-4o-mini/x/chat/completions", `{"messages":[],"max_tokens":5}`},
	} {
		if w := hs.do("POST", tc.path, tc.body); w.Code != 400 && w.Code != 403 {
			t.Errorf("%s %s: %d %s", tc.path, tc.body, w.Code, w.Body)
		}
	}
	for _, tc := range []struct{ path, body string }{
		{"/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21", `{"messages":[],"max_tokens":5}`},
		{"/openai/deployments/gpt-4o-mini/chat/completions", `{"model":"GPT-4o-mini","messages":[],"max_tokens":5}`},
	} {
		if w := hs.do("POST", tc.path, tc.body); w.Code != 200 {
			t.Errorf("%s %s: %d %s", tc.path, tc.body, w.Code, w.Body)
		}
	}
	if hs.served != 2 {
		t.Fatalf("the backend served %d requests, want 2", hs.served)
	}
	// Under reserve estimate, a body too large to read (or none) still
	// has the path's model.
	est := newHarness(t, quota.Limits{"tokens.premium": {{Limit: 0}}, "tokens": {{Limit: 1_000_000}}}, func(h *Handler, a *App) {
		a.ModelGroups, a.UnmatchedModels = groups, quota.UnmatchedAllow
		h.Reserve, h.MaxRequestBody = string(quota.ReserveEstimate), 200
	})
	big := `{"messages":[{"role":"user","content":"` + strings.Repeat("x", 300) + `"}]}`
	for _, body := range []string{big, ""} {
		if w := est.do("POST", "/openai/deployments/gpt-4o/chat/completions", body); w.Code != 403 {
			t.Errorf("estimate, body of %d bytes: %d %s", len(body), w.Code, w.Body)
		}
	}
	if est.served != 0 {
		t.Fatalf("the backend served %d premium requests against a premium limit of 0", est.served)
	}
}

// TestWarnsOfTokensCaddyLogs: Caddy's access and error logs redact only
// Authorization, and no plugin can change that; the first token that
// comes in another header makes the handler warn once, naming the header
// and the filter that keeps it out of the logs, and never the token.
func TestWarnsOfTokensCaddyLogs(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	hs := newHarness(t, quota.Limits{"messages": {{Limit: 100}}}, func(h *Handler, _ *App) { h.logger = zap.New(core) })
	hs.do("POST", "/v1/x", `{}`) // Authorization: redacted by Caddy
	if n := logs.Len(); n != 0 {
		t.Fatalf("%d warnings for a token in Authorization", n)
	}
	// The token is taken from Authorization, but Caddy logs Api-Key too.
	hs.do("POST", "/v1/x", `{}`, "Api-Key", "tq_other")
	if n := logs.Len(); n != 1 {
		t.Fatalf("%d warnings for a request with a token in Api-Key beside Authorization", n)
	}
	hs.h.headerWarned.Store(false)
	logs.TakeAll()
	for range 3 {
		r := httptest.NewRequest("POST", "/v1/x", strings.NewReader(`{}`))
		r.Header.Set("X-Api-Key", hs.secret)
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
		w := httptest.NewRecorder()
		if err := hs.h.ServeHTTP(w, r, caddyhttp.HandlerFunc(hs.backend)); err != nil || w.Code != 200 {
			t.Fatalf("%d %v", w.Code, err)
		}
	}
	all := logs.All()
	if len(all) != 1 {
		t.Fatalf("%d warnings, want 1", len(all))
	}
	line := fmt.Sprint(all[0].Message, all[0].ContextMap())
	if !strings.Contains(line, "X-Api-Key") || !strings.Contains(line, "request>headers>X-Api-Key delete") || strings.Contains(line, hs.secret) {
		t.Fatalf("warning: %s", line)
	}
}
