package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tenantquota/caddy-tenant-quota/internal/redistest"
)

// llmBackend answers like an LLM API: JSON with usage on /v1/chat/completions,
// an SSE stream when the request asks for one (with a usage chunk only if
// the request asked for it), and a usage header on /v1/header.
func llmBackend(t *testing.T) (*httptest.Server, *atomic.Int64) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		var req struct {
			Stream        bool `json:"stream"`
			StreamOptions *struct {
				IncludeUsage bool `json:"include_usage"`
			} `json:"stream_options"`
		}
		body, _ := io.ReadAll(r.Body)
		json.Unmarshal(body, &req)
		switch {
		case strings.HasPrefix(r.URL.Path, "/v1/header/"):
			w.Header().Set("X-Usage-Tokens", "input=5, output=7")
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, "ok")
		case req.Stream:
			w.Header().Set("Content-Type", "text/event-stream")
			fl := w.(http.Flusher)
			for _, word := range []string{"Hel", "lo"} {
				fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":%q}}],\"usage\":null}\n\n", word)
				fl.Flush()
			}
			if req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
				io.WriteString(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":13,\"total_tokens\":24}}\n\n")
			}
			io.WriteString(w, "data: [DONE]\n\n")
		default:
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"object":"chat.completion","choices":[{"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30}}`)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

// chat sends a tenant request with the shared client.
func chat(t *testing.T, url, token, body string) *http.Response {
	t.Helper()
	resp, err := client.Do(tenantRequest(url, token, body))
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// TestTokenMetering: token usage is read from JSON bodies, SSE streams (a
// stream that did not ask for usage is made to) and a backend header, on
// both stores, and the reservation is settled to it.
func TestTokenMetering(t *testing.T) {
	t.Parallel()
	for _, st := range allStores() {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			be, _ := llmBackend(t)
			g := startGateway(t, st.opts(t), strings.TrimPrefix(be.URL, "http://"))
			created := g.tenant(t, map[string]any{
				"name": "T", "email": "t@example.com", "issueToken": true,
				"limits": map[string]any{"tokens": 100000, "output_tokens": map[string]any{"limit": 50000, "per": "day"}},
			})
			tok := created.Token.Token
			used := func(resource string) int64 { return g.used(t, created.User.ID, resource) }

			resp := chat(t, g.url+"/v1/chat/completions", tok, `{"model":"m","messages":[{"role":"user","content":"hello there"}],"max_tokens":100}`)
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			wantStatus(t, resp, http.StatusOK)
			if used("tokens") != 30 || used("input_tokens") != 10 || used("output_tokens") != 20 {
				t.Fatalf("after a JSON completion: tokens %d, input %d, output %d", used("tokens"), used("input_tokens"), used("output_tokens"))
			}

			resp = chat(t, g.url+"/v1/chat/completions", tok, `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(data), "[DONE]") {
				t.Fatalf("stream body: %q", data)
			}
			if used("tokens") != 54 || used("input_tokens") != 21 || used("output_tokens") != 33 {
				t.Fatalf("after a stream that did not ask for usage: tokens %d, input %d, output %d", used("tokens"), used("input_tokens"), used("output_tokens"))
			}

			resp = chat(t, g.url+"/v1/header/chat/completions", tok, `{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.Header.Get("X-Usage-Tokens") != "" {
				t.Fatal("the backend's usage header reached the client")
			}
			if used("tokens") != 66 || used("messages") != 3 {
				t.Fatalf("after a header-reported usage: tokens %d, messages %d", used("tokens"), used("messages"))
			}
		})
	}
}

// TestTokenReservations: with a token cap of T and 100 concurrent requests
// that each use 30 tokens, the tokens admitted never exceed T, because each
// request reserves its estimate (prompt + max_tokens) before it is
// forwarded and settles to the real usage after.
func TestTokenReservations(t *testing.T) {
	t.Parallel()
	for _, st := range allStores() {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			be, hits := llmBackend(t)
			g := startGateway(t, st.opts(t), strings.TrimPrefix(be.URL, "http://"))
			const capTokens = 1000
			created := g.tenant(t, map[string]any{
				"name": "R", "email": "r@example.com", "issueToken": true, "limits": map[string]any{"tokens": capTokens},
			})
			counts := burst(100, func(int) *http.Request {
				return tenantRequest(g.url+"/v1/chat/completions", created.Token.Token,
					`{"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":30}`)
			})
			ok, tokens := counts[http.StatusOK], g.used(t, created.User.ID, "tokens")
			t.Logf("answers by status %v, tokens used %d of %d", counts, tokens, capTokens)
			if tokens > capTokens {
				t.Fatalf("tokens used %d over the cap of %d", tokens, capTokens)
			}
			if ok == 0 || counts[http.StatusTooManyRequests] != 100-ok || tokens != 30*ok || hits.Load() != ok {
				t.Fatalf("answers by status %v, backend saw %d, tokens %d: want 30 tokens per admitted request", counts, hits.Load(), tokens)
			}
		})
	}
}

// TestCrashedNodeKeepsReservation: a node that dies with a request in
// flight never settles its reservation; once reservation_ttl has passed the
// next admission on any node ends its lease, and what it reserved stays
// counted (the backend may have spent all of it): a crash never gives a
// tenant tokens back. Nothing shows as reserved any more.
func TestCrashedNodeKeepsReservation(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // hold the request until the test ends
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); hung.Close() })
	opts := "redis redis://" + redistest.Start(t).Addr() + "/0"
	a := startGatewayWith(t, opts, "", "reservation_ttl 1s", strings.TrimPrefix(hung.URL, "http://"))
	created := a.tenant(t, map[string]any{"name": "X", "email": "x@example.com", "limits": map[string]any{"tokens": 1000}})

	go func() { // in flight when node A dies
		resp, err := client.Do(tenantRequest(a.url+"/v1/chat/completions", created.Token.Token,
			`{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":500}`))
		if err == nil {
			resp.Body.Close()
		}
	}()
	// A strict reservation: max_tokens and a bound of the prompt.
	var reserved int64
	eventually(t, "the reservation", func() bool { reserved = a.used(t, created.User.ID, "tokens"); return reserved > 500 })
	a.kill() // a crash: no settlement

	b := startGatewayWith(t, opts, "", "reservation_ttl 1s", strings.TrimPrefix(hung.URL, "http://"))
	if got := b.used(t, created.User.ID, "tokens"); got != reserved {
		t.Fatalf("tokens after the crash = %d, want the %d still reserved", got, reserved)
	}
	time.Sleep(2100 * time.Millisecond)
	// Any admission of the tenant sweeps its expired leases first, even
	// one it then refuses (this one asks for more than the cap).
	resp, err := client.Do(tenantRequest(b.url+"/v1/chat/completions", created.Token.Token,
		`{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5000}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	wantStatus(t, resp, http.StatusTooManyRequests)
	if got := b.used(t, created.User.ID, "tokens"); got != reserved {
		t.Fatalf("tokens after reservation_ttl = %d, want the %d reserved (kept as used)", got, reserved)
	}
	for res, it := range b.lifetime(t, created.User.ID) {
		if it.Reserved != 0 {
			t.Fatalf("%s still shows %d reserved after reservation_ttl", res, it.Reserved)
		}
	}
}
