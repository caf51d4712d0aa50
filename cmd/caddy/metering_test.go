package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
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
		case r.URL.Path == "/v1/header":
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

type usageItems struct {
	Items []struct {
		Resource, Per string
		Used          int64
	} `json:"items"`
}

func (u usageItems) get(resource string) int64 {
	for _, it := range u.Items {
		if it.Resource == resource && it.Per == "lifetime" {
			return it.Used
		}
	}
	return 0
}

func chat(t *testing.T, url, token, body string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// TestTokenMetering: token usage is read from JSON bodies, SSE streams (a
// stream that did not ask for usage is made to) and a backend header, on
// both stores, and the reservation is settled to it.
func TestTokenMetering(t *testing.T) {
	for _, st := range allStores() {
		t.Run(st.name, func(t *testing.T) {
			be, _ := llmBackend(t)
			g := startGateway(t, st.opts(t), strings.TrimPrefix(be.URL, "http://"))
			var created userResp
			wantStatus(t, call(t, "POST", g.url+"/quota/users", adminKey, map[string]any{
				"name": "T", "email": "t@example.com", "issueToken": true,
				"limits": map[string]any{"tokens": 100000, "output_tokens": map[string]any{"limit": 50000, "per": "day"}},
			}, &created), http.StatusCreated)
			tok := created.Token.Token
			usage := func() usageItems {
				var u usageItems
				wantStatus(t, call(t, "GET", g.url+"/quota/users/"+created.User.ID+"/usage", adminKey, nil, &u), http.StatusOK)
				return u
			}

			resp := chat(t, g.url+"/v1/chat/completions", tok, `{"model":"m","messages":[{"role":"user","content":"hello there"}],"max_tokens":100}`)
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			wantStatus(t, resp, http.StatusOK)
			u := usage()
			if u.get("tokens") != 30 || u.get("input_tokens") != 10 || u.get("output_tokens") != 20 {
				t.Fatalf("after a JSON completion: %+v", u)
			}

			resp = chat(t, g.url+"/v1/chat/completions", tok, `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(data), "[DONE]") {
				t.Fatalf("stream body: %q", data)
			}
			u = usage()
			if u.get("tokens") != 54 || u.get("input_tokens") != 21 || u.get("output_tokens") != 33 {
				t.Fatalf("after a stream that did not ask for usage: %+v", u)
			}

			resp = chat(t, g.url+"/v1/header", tok, `{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.Header.Get("X-Usage-Tokens") != "" {
				t.Fatal("the backend's usage header reached the client")
			}
			u = usage()
			if u.get("tokens") != 66 || u.get("messages") != 3 {
				t.Fatalf("after a header-reported usage: %+v", u)
			}
		})
	}
}

// TestTokenReservations: with a token cap of T and 100 concurrent requests
// that each use 30 tokens, the tokens admitted never exceed T, because each
// request reserves its estimate (prompt + max_tokens) before it is
// forwarded and settles to the real usage after.
func TestTokenReservations(t *testing.T) {
	for _, st := range allStores() {
		t.Run(st.name, func(t *testing.T) {
			be, hits := llmBackend(t)
			g := startGateway(t, st.opts(t), strings.TrimPrefix(be.URL, "http://"))
			const capTokens = 1000
			var created userResp
			wantStatus(t, call(t, "POST", g.url+"/quota/users", adminKey, map[string]any{
				"name": "R", "email": "r@example.com", "issueToken": true, "limits": map[string]any{"tokens": capTokens},
			}, &created), http.StatusCreated)
			var ok, limited atomic.Int64
			var wg sync.WaitGroup
			start := make(chan struct{})
			tr := &http.Transport{MaxIdleConnsPerHost: 100}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
			for i := 0; i < 100; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					req, _ := http.NewRequest("POST", g.url+"/v1/chat/completions",
						strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":30}`))
					req.Header.Set("Authorization", "Bearer "+created.Token.Token)
					req.Header.Set("Content-Type", "application/json")
					resp, err := c.Do(req)
					if err != nil {
						t.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					switch resp.StatusCode {
					case http.StatusOK:
						ok.Add(1)
					case http.StatusTooManyRequests:
						limited.Add(1)
					default:
						t.Errorf("status %d", resp.StatusCode)
					}
				}()
			}
			close(start)
			wg.Wait()
			var u usageItems
			wantStatus(t, call(t, "GET", g.url+"/quota/users/"+created.User.ID+"/usage", adminKey, nil, &u), http.StatusOK)
			t.Logf("admitted %d, limited %d, tokens used %d of %d", ok.Load(), limited.Load(), u.get("tokens"), capTokens)
			if u.get("tokens") > capTokens {
				t.Fatalf("tokens used %d over the cap of %d", u.get("tokens"), capTokens)
			}
			if u.get("tokens") != 30*ok.Load() || hits.Load() != ok.Load() || ok.Load() == 0 || limited.Load() == 0 {
				t.Fatalf("admitted %d, backend saw %d, tokens %d: want 30 tokens per admitted request", ok.Load(), hits.Load(), u.get("tokens"))
			}
		})
	}
}
