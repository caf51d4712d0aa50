package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tenantquota/caddy-tenant-quota/internal/redistest"
)

// honestBackend is an LLM backend that honours the output maximum it is
// sent and reports a prompt count from a prolific tokenizer: one token per
// byte of message text plus four per message and three to prime the reply
// (a real byte-level BPE makes no more). A request with no maximum gets
// noMax tokens, more than any cap in these tests: what the gateway must
// prevent by writing a maximum into the body. It answers OpenAI Chat
// Completions (JSON, or SSE with usage when asked), OpenAI Responses and
// Anthropic Messages; a body that is not JSON gets a 400 without usage.
type honestBackend struct {
	*httptest.Server
	hits    atomic.Int64
	noMaxes atomic.Int64 // requests that reached it without a maximum
}

const noMax = 5000

func newHonestBackend(t *testing.T) *honestBackend {
	b := &honestBackend{}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		body, _ := io.ReadAll(r.Body)
		var req map[string]any
		if json.Unmarshal(body, &req) != nil {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error":{"message":"not JSON"}}`)
			return
		}
		prompt := int64(3)
		var walk func(v any)
		walk = func(v any) {
			switch v := v.(type) {
			case string:
				prompt += int64(len(v))
			case []any:
				for _, e := range v {
					walk(e)
				}
			case map[string]any:
				for k, e := range v {
					if k != "image_url" {
						walk(e)
					}
				}
			}
		}
		for _, k := range []string{"messages", "input", "system", "prompt"} {
			walk(req[k])
			if a, ok := req[k].([]any); ok {
				prompt += 4 * int64(len(a))
			}
		}
		out := int64(-1)
		for _, k := range []string{"max_tokens", "max_completion_tokens", "max_output_tokens"} {
			if f, ok := req[k].(float64); ok && (out < 0 || int64(f) < out) {
				out = int64(f) // the smallest maximum wins
			}
		}
		if out < 0 {
			b.noMaxes.Add(1)
			out = noMax
		}
		stream, _ := req["stream"].(bool)
		opts, _ := req["stream_options"].(map[string]any)
		switch {
		case strings.HasSuffix(r.URL.Path, "/messages"):
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"type":"message","content":[{"type":"text","text":"%s"}],"usage":{"input_tokens":%d,"output_tokens":%d}}`, strings.Repeat("w", int(min(out, 100))), prompt, out)
		case strings.HasSuffix(r.URL.Path, "/responses"):
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"object":"response","output":[],"usage":{"input_tokens":%d,"output_tokens":%d,"total_tokens":%d}}`, prompt, out, prompt+out)
		case stream:
			w.Header().Set("Content-Type", "text/event-stream")
			fl, _ := w.(http.Flusher)
			// One chunk per 64 tokens, four bytes a token.
			for sent := int64(0); sent < out; sent += 64 {
				n := min(64, out-sent)
				if _, err := fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"%s\"}}],\"usage\":null}\n\n", strings.Repeat("w", int(4*n))); err != nil {
					return
				}
				if fl != nil {
					fl.Flush()
				}
				time.Sleep(time.Millisecond)
			}
			if opts != nil && opts["include_usage"] == true {
				fmt.Fprintf(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d}}\n\n", prompt, out, prompt+out)
			}
			io.WriteString(w, "data: [DONE]\n\n")
		default:
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"object":"chat.completion","choices":[{"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}`, prompt, out, prompt+out)
		}
	}))
	t.Cleanup(b.Close)
	return b
}

// usageItem is one lifetime counter of a tenant, through the admin API.
type usageItem struct {
	Resource, Per  string
	Used, Reserved int64
}

func (g *gateway) lifetime(t *testing.T, userID string) map[string]usageItem {
	t.Helper()
	var usage struct {
		Items []usageItem `json:"items"`
	}
	wantStatus(t, call(t, "GET", g.url+"/quota/users/"+userID+"/usage", adminKey, nil, &usage), http.StatusOK)
	out := map[string]usageItem{}
	for _, it := range usage.Items {
		if it.Per == "lifetime" {
			out[it.Resource] = it
		}
	}
	return out
}

// send posts body to the gateway with a Content-Type ("" for none) and
// returns the status and body.
func send(t *testing.T, url, token, contentType, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

// TestHardCaps: each way a tenant got past a token cap (issue 7), on both
// stores, as a regression test.
func TestHardCaps(t *testing.T) {
	t.Parallel()
	for _, st := range allStores() {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			be := newHonestBackend(t)
			g := startGateway(t, st.opts(t), strings.TrimPrefix(be.URL, "http://"))
			chatURL := g.url + "/v1/chat/completions"
			newTenant := func(email string, tokens int64) (string, string) {
				c := g.tenant(t, map[string]any{"name": "H", "email": email, "limits": map[string]any{"tokens": tokens}})
				return c.User.ID, c.Token.Token
			}
			// refusedFree checks that refused requests reached no backend
			// and charged nothing.
			refusedFree := func(t *testing.T, uid string, hitsBefore int64) {
				t.Helper()
				if be.hits.Load() != hitsBefore {
					t.Fatal("a refused request reached the backend")
				}
				if u := g.lifetime(t, uid); u["tokens"].Used != 0 || u["messages"].Used != 0 {
					t.Fatalf("refused requests were charged: %+v", u)
				}
			}

			t.Run("huge and malformed maxima are refused before the backend", func(t *testing.T) {
				uid, tok := newTenant("overflow@example.com", 1000)
				before := be.hits.Load()
				for _, v := range []string{"9223372036854775807", "-5", "0", "1.5", `"100"`, "1e3", "1125899906842625"} {
					status, body := send(t, chatURL, tok, "application/json", `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":`+v+`}`)
					if status != http.StatusBadRequest || !strings.Contains(body, `"param":"max_tokens"`) || !strings.Contains(body, "invalid_request_error") {
						t.Fatalf("max_tokens %s: %d %s", v, status, body)
					}
				}
				refusedFree(t, uid, before)
			})

			t.Run("any Content-Type is metered and streams report usage", func(t *testing.T) {
				for i, ct := range []string{"", "text/plain", "application/merge-patch+json"} {
					uid, tok := newTenant(fmt.Sprintf("ct%d@example.com", i), 400)
					body := `{"model":"m","stream":true,"messages":[{"role":"user","content":"hello"}],"max_tokens":100}`
					for {
						status, _ := send(t, chatURL, tok, ct, body)
						if status == http.StatusTooManyRequests {
							break
						}
						if status != http.StatusOK {
							t.Fatalf("Content-Type %q: status %d", ct, status)
						}
					}
					if u := g.lifetime(t, uid); u["tokens"].Used > 400 || u["tokens"].Used < 100 || u["tokens"].Reserved != 0 {
						t.Fatalf("Content-Type %q: %+v", ct, u["tokens"])
					}
				}
			})

			t.Run("an empty prompt over the cap is refused", func(t *testing.T) {
				uid, tok := newTenant("empty@example.com", 50)
				// Without a maximum, each request is given what fits, until
				// nothing does.
				for i := 0; ; i++ {
					status, _ := send(t, chatURL, tok, "application/json", `{}`)
					if status == http.StatusTooManyRequests {
						break
					}
					if status != http.StatusOK || i > 50 {
						t.Fatalf("request %d: %d", i, status)
					}
				}
				for _, body := range []string{`{}`, `{"model":"m"}`, `{"messages":[]}`} {
					if status, b := send(t, chatURL, tok, "application/json", body); status != http.StatusTooManyRequests {
						t.Fatalf("%s over the cap: %d %s", body, status, b)
					}
				}
				if u := g.lifetime(t, uid); u["tokens"].Used > 50 {
					t.Fatalf("tokens %+v over the cap of 50", u["tokens"])
				}
			})

			t.Run("a hang-up mid-stream is charged at once", func(t *testing.T) {
				uid, tok := newTenant("hangup@example.com", 100000)
				ctx, cancel := context.WithCancel(context.Background())
				req, _ := http.NewRequestWithContext(ctx, "POST", chatURL, strings.NewReader(`{"model":"m","stream":true,"messages":[{"role":"user","content":"hello"}],"max_tokens":3000}`))
				req.Header.Set("Authorization", "Bearer "+tok)
				resp, err := client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 300)
				io.ReadFull(resp.Body, buf) // a few chunks, then hang up
				cancel()
				resp.Body.Close()
				var u map[string]usageItem
				eventually(t, "the hang-up's settlement", func() bool {
					u = g.lifetime(t, uid)
					return u["tokens"].Reserved == 0
				})
				if got := u["tokens"].Used; got < 75 || got >= 3000 {
					t.Fatalf("a hang-up after about 300 bytes was charged %d tokens", got)
				}
			})

			t.Run("concurrent requests never overshoot", func(t *testing.T) {
				uid, tok := newTenant("burst@example.com", 500)
				counts := burst(100, func(int) *http.Request {
					return tenantRequest(chatURL, tok, `{"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":20}`)
				})
				u := g.lifetime(t, uid)
				t.Logf("answers %v, tokens %+v", counts, u["tokens"])
				if u["tokens"].Used > 500 || u["tokens"].Reserved != 0 || counts[http.StatusOK] == 0 || counts[http.StatusOK]+counts[http.StatusTooManyRequests] != 100 {
					t.Fatalf("answers %v, tokens %+v (cap 500)", counts, u["tokens"])
				}
			})

			t.Run("a small cap is served and told the truth", func(t *testing.T) {
				uid, tok := newTenant("small@example.com", 1000)
				status, body := send(t, chatURL, tok, "application/json", `{"model":"m","messages":[{"role":"user","content":"hello"}]}`)
				if status != http.StatusOK {
					t.Fatalf("first request of a 1,000-token tenant: %d %s", status, body)
				}
				if be.noMaxes.Load() != 0 {
					t.Fatal("a request reached the backend without a maximum")
				}
				u := g.lifetime(t, uid)
				if u["tokens"].Used > 1000 {
					t.Fatalf("tokens %+v", u["tokens"])
				}
				status, body = send(t, chatURL, tok, "application/json", `{"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":2000}`)
				var e openAIErr
				json.Unmarshal([]byte(body), &e)
				if status != http.StatusTooManyRequests || !strings.Contains(e.Error.Message, "max_tokens 2000") || !strings.Contains(e.Error.Message, "remain") {
					t.Fatalf("a maximum that cannot fit: %d %s", status, body)
				}
			})

			t.Run("a body too large to bound, or not JSON, is refused", func(t *testing.T) {
				uid, tok := newTenant("big@example.com", 100000000)
				before := be.hits.Load()
				big := `{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("x", 5<<20) + `"}]}`
				if status, body := send(t, chatURL, tok, "application/json", big); status != http.StatusRequestEntityTooLarge || !strings.Contains(body, "max_request_body") {
					t.Fatalf("a %d-byte body: %d %s", len(big), status, body)
				}
				for _, body := range []string{"hello, not JSON", `["a list"]`, `"a string"`, ""} {
					if status, b := send(t, chatURL, tok, "text/plain", body); status != http.StatusBadRequest || !strings.Contains(b, "JSON object") {
						t.Fatalf("a body %q: %d %s", body, status, b)
					}
				}
				refusedFree(t, uid, before)
			})

			t.Run("an absurd usage report is clamped", func(t *testing.T) {
				liar := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Type", "application/json")
					io.WriteString(w, `{"usage":{"prompt_tokens":9223372036854775807,"completion_tokens":9223372036854775000}}`)
				}))
				t.Cleanup(liar.Close)
				lg := startGateway(t, st.opts(t), strings.TrimPrefix(liar.URL, "http://"))
				c := lg.tenant(t, map[string]any{"name": "L", "email": "liar@example.com"})
				for range 3 {
					if status, body := send(t, lg.url+"/v1/chat/completions", c.Token.Token, "application/json", `{"model":"m","max_tokens":5}`); status != http.StatusOK {
						t.Fatalf("%d %s", status, body)
					}
				}
				u := lg.lifetime(t, c.User.ID)
				if tk := u["tokens"].Used; tk <= 0 || tk > 1<<52 {
					t.Fatalf("tokens %d after absurd reports: wrapped or unbounded", tk)
				}
				if logs := lg.logs.String(); strings.Contains(logs, `"level":"error"`) || strings.Count(logs, "absurd token usage") != 1 {
					t.Fatalf("want no ERROR line and one WARN about the absurd report:\n%s", logs)
				}
			})
		})
	}
}

// TestAdversarialTraffic: many tenants' hostile requests at once (huge and
// malformed numbers, missing and odd Content-Types, empty and long
// prompts, images, streams, hang-ups), against a backend that honours the
// maximum it is sent. Afterwards every tenant's tokens are within its cap,
// nothing is left reserved, no counter is negative or wrapped, and no
// request got a 5xx. On the embedded store, and on two gateways sharing
// Redis.
func TestAdversarialTraffic(t *testing.T) {
	t.Parallel()
	t.Run("embedded", func(t *testing.T) {
		t.Parallel()
		be := newHonestBackend(t)
		g := startGateway(t, "", strings.TrimPrefix(be.URL, "http://"))
		adversarial(t, g, g)
	})
	t.Run("redis two gateways", func(t *testing.T) {
		t.Parallel()
		be := newHonestBackend(t)
		opts := "redis redis://" + redistest.Start(t).Addr() + "/0"
		a := startGateway(t, opts, strings.TrimPrefix(be.URL, "http://"))
		b := startGateway(t, opts, strings.TrimPrefix(be.URL, "http://"))
		adversarial(t, a, b)
	})
}

func adversarial(t *testing.T, a, b *gateway) {
	caps := []int64{150, 400, 800, 1500, 2500, 4000}
	type tenant struct {
		id, token string
		cap       int64
	}
	var tenants []tenant
	for i, c := range caps {
		created := a.tenant(t, map[string]any{"name": "A", "email": fmt.Sprintf("adv%d@example.com", i), "limits": map[string]any{"tokens": c}})
		tenants = append(tenants, tenant{created.User.ID, created.Token.Token, c})
	}
	paths := []string{"/v1/chat/completions", "/v1/chat/completions", "/v1/chat/completions", "/v1/responses", "/v1/messages"}
	maxes := []string{"", "", "1", "17", "64", "250", "999", "9223372036854775807", "-1", "0", "2.5", `"50"`, "null"}
	prompts := []string{"", "hi", "hello", strings.Repeat("日本語", 40), strings.Repeat("ab ", 300)}
	types := []string{"application/json", "", "text/plain", "application/merge-patch+json"}
	var fivexx, statuses sync.Map
	var wg sync.WaitGroup
	var next atomic.Int64
	const total, workers = 640, 16
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			tr := &http.Transport{}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 20 * time.Second}
			for next.Add(1) <= total {
				tn := tenants[rng.IntN(len(tenants))]
				path := paths[rng.IntN(len(paths))]
				fields := []string{`"model":"m"`}
				prompt := prompts[rng.IntN(len(prompts))]
				switch rng.IntN(4) {
				case 0:
					fields = append(fields, fmt.Sprintf(`"messages":[{"role":"user","content":%q}]`, prompt))
				case 1:
					fields = append(fields, fmt.Sprintf(`"messages":[{"role":"user","content":[{"type":"text","text":%q},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]`, prompt))
				case 2:
					fields = append(fields, fmt.Sprintf(`"input":%q`, prompt))
				}
				if m := maxes[rng.IntN(len(maxes))]; m != "" {
					field := []string{"max_tokens", "max_completion_tokens", "max_output_tokens"}[rng.IntN(3)]
					fields = append(fields, fmt.Sprintf(`%q:%s`, field, m))
				}
				stream := rng.IntN(2) == 0
				if stream {
					fields = append(fields, `"stream":true`)
				}
				body := "{" + strings.Join(fields, ",") + "}"
				if rng.IntN(20) == 0 {
					body = "not json " + prompt
				}
				g := a
				if rng.IntN(2) == 0 {
					g = b
				}
				ctx, cancel := context.WithCancel(context.Background())
				req, _ := http.NewRequestWithContext(ctx, "POST", g.url+path, strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+tn.token)
				if ct := types[rng.IntN(len(types))]; ct != "" {
					req.Header.Set("Content-Type", ct)
				}
				resp, err := c.Do(req)
				if err == nil {
					if rng.IntN(4) == 0 {
						io.ReadFull(resp.Body, make([]byte, rng.IntN(600))) // hang up part-way
						cancel()
					} else {
						io.Copy(io.Discard, resp.Body)
					}
					resp.Body.Close()
					n, _ := statuses.LoadOrStore(resp.StatusCode, new(atomic.Int64))
					n.(*atomic.Int64).Add(1)
					if resp.StatusCode >= 500 {
						fivexx.Store(body, resp.StatusCode)
					}
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	fivexx.Range(func(k, v any) bool {
		t.Errorf("%v for %s", v, k)
		return true
	})
	counts := map[any]int64{}
	statuses.Range(func(k, v any) bool { counts[k] = v.(*atomic.Int64).Load(); return true })
	worst := 0.0
	for _, tn := range tenants {
		var u map[string]usageItem
		eventually(t, "every reservation settled", func() bool {
			u = a.lifetime(t, tn.id)
			return u["tokens"].Reserved == 0
		})
		for r, it := range u {
			if it.Used < 0 || it.Used > 1<<52 || it.Reserved != 0 {
				t.Errorf("tenant cap %d: counter %s = %+v", tn.cap, r, it)
			}
		}
		used := u["tokens"].Used
		worst = max(worst, float64(used)/float64(tn.cap))
		if used > tn.cap {
			t.Errorf("tenant with a cap of %d used %d tokens", tn.cap, used)
		}
	}
	t.Logf("statuses %v; largest used/cap %.3f", counts, worst)
	for _, g := range []*gateway{a, b} {
		if strings.Contains(g.logs.String(), `"level":"error"`) {
			t.Errorf("an ERROR log line:\n%s", g.logs)
		}
	}
}

// TestEstimateLargeBodies: with reserve estimate, a body too large to read
// is forwarded and charged by its size, and one that is not JSON is
// charged its estimate even when the backend refuses it: never 0.
func TestEstimateLargeBodies(t *testing.T) {
	t.Parallel()
	for _, st := range allStores() {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			be := newHonestBackend(t)
			g := startGatewayWith(t, st.opts(t), "", "reserve estimate", strings.TrimPrefix(be.URL, "http://"))
			c := g.tenant(t, map[string]any{"name": "B", "email": "b@example.com", "limits": map[string]any{"tokens": 100000000}})
			big := `{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"` + strings.Repeat("x", 5<<20) + `"}]}`
			if status, _ := send(t, g.url+"/v1/chat/completions", c.Token.Token, "application/json", big); status != http.StatusOK {
				t.Fatalf("a %d-byte body: %d", len(big), status)
			}
			if u := g.lifetime(t, c.User.ID); u["tokens"].Used < 5<<20 || u["tokens"].Reserved != 0 {
				t.Fatalf("a 5 MiB prompt was charged %+v", u["tokens"])
			}
			before := g.lifetime(t, c.User.ID)["tokens"].Used
			if status, _ := send(t, g.url+"/v1/chat/completions", c.Token.Token, "text/plain", "hello, not JSON"); status != http.StatusBadRequest {
				t.Fatalf("a body that is not JSON: %d", status)
			}
			if u := g.lifetime(t, c.User.ID); u["tokens"].Used <= before || u["tokens"].Reserved != 0 {
				t.Fatalf("a body that is not JSON was charged nothing: %+v", u["tokens"])
			}
		})
	}
}

// TestAdminWritesAtomic: through the real binary, on both stores, 50
// concurrent top-ups of 1 add exactly 50, a disable racing top-ups sticks
// (the token stops working), and credits keep the bound of top-ups.
func TestAdminWritesAtomic(t *testing.T) {
	t.Parallel()
	for _, st := range allStores() {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			g := startGateway(t, st.opts(t), "127.0.0.1:1")
			wantStatus(t, call(t, "POST", g.url+"/quota/users", adminKey, map[string]any{"name": "B", "email": "bound@example.com", "credits": int64(1) << 62}, nil), http.StatusBadRequest)
			c := g.tenant(t, map[string]any{"name": "A", "email": "atomic@example.com"})
			topUps := func(n int) {
				var wg sync.WaitGroup
				for range n {
					wg.Add(1)
					go func() {
						defer wg.Done()
						resp := call(t, "POST", g.url+"/quota/users/"+c.User.ID+"/credits", adminKey, map[string]any{"amount": 1}, nil)
						if resp.StatusCode != http.StatusOK {
							t.Errorf("top-up: %d", resp.StatusCode)
						}
					}()
				}
				wg.Wait()
			}
			topUps(50)
			var u struct {
				Credits int64  `json:"credits"`
				Status  string `json:"status"`
			}
			wantStatus(t, call(t, "GET", g.url+"/quota/users/"+c.User.ID, adminKey, nil, &u), http.StatusOK)
			if u.Credits != 50 {
				t.Fatalf("50 concurrent top-ups of 1 left %d credits", u.Credits)
			}
			for trial := range 5 {
				done := make(chan struct{})
				go func() { defer close(done); topUps(10) }()
				wantStatus(t, call(t, "PATCH", g.url+"/quota/users/"+c.User.ID, adminKey, map[string]any{"status": "disabled"}, nil), http.StatusOK)
				<-done
				wantStatus(t, call(t, "GET", g.url+"/quota/users/"+c.User.ID, adminKey, nil, &u), http.StatusOK)
				if u.Status != "disabled" {
					t.Fatalf("trial %d: a disable racing top-ups did not stick", trial)
				}
				if resp := call(t, "POST", g.url+"/v1/chat/completions", c.Token.Token, map[string]any{}, nil); resp.StatusCode != http.StatusForbidden {
					t.Fatalf("trial %d: a disabled tenant's token got %d", trial, resp.StatusCode)
				}
				wantStatus(t, call(t, "PATCH", g.url+"/quota/users/"+c.User.ID, adminKey, map[string]any{"status": "active"}, nil), http.StatusOK)
			}
		})
	}
}
