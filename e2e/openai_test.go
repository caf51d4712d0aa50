package e2e

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// TestOpenAIClient drives the gateway with the official OpenAI Go library:
// its streamed completions are metered (the gateway asks the backend for the
// usage the client did not request), and at the cap it gets a clean error
// that it does not retry.
func TestOpenAIClient(t *testing.T) {
	t.Parallel()
	be, _ := llmBackend(t)
	g := startGateway(t, "", strings.TrimPrefix(be.URL, "http://"))
	created := g.tenant(t, map[string]any{
		"name": "SDK", "email": "sdk@example.com", "issueToken": true, "limits": map[string]any{"messages": 2},
	})

	counting, seen := countingProxy(t, g)
	client := openai.NewClient(option.WithBaseURL(counting+"/v1/"), option.WithAPIKey(created.Token.Token), option.WithMaxRetries(3))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	params := openai.ChatCompletionNewParams{
		Model:    "gpt-test",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
	}
	for i := 0; i < 2; i++ {
		stream := client.Chat.Completions.NewStreaming(ctx, params)
		var text strings.Builder
		for stream.Next() {
			for _, c := range stream.Current().Choices {
				text.WriteString(c.Delta.Content)
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		if text.String() != "Hello" {
			t.Fatalf("stream %d text %q", i, text.String())
		}
	}
	// The stream's settlement ends just after its last byte reached the
	// client: until then the read sees the reservation.
	var got int64
	if !settles(func() bool { got = g.used(t, created.User.ID, "tokens"); return got == 48 }) {
		t.Fatalf("tokens after two streams = %d, want 48 (the backend's usage chunk, 24 each)", got)
	}

	seen.Store(0)
	start := time.Now()
	_, err := client.Chat.Completions.New(ctx, params)
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusTooManyRequests || apiErr.Code != "quota_exceeded" {
		t.Fatalf("at the cap: %v", err)
	}
	if seen.Load() != 1 {
		t.Fatalf("the client sent the refused request %d times; x-should-retry: false should stop retries", seen.Load())
	}
	t.Logf("refused in %v: %s", time.Since(start), apiErr.Message)
}

// TestOpenAIClientSmallCap: a tenant with a 1,000-token cap and a client
// that sets no max_tokens is served (the gateway writes a maximum that
// fits into the request), until the cap; then it gets one 429 that the
// client does not retry, and the cap held.
func TestOpenAIClientSmallCap(t *testing.T) {
	t.Parallel()
	be := newHonestBackend(t)
	g := startGateway(t, "", strings.TrimPrefix(be.URL, "http://"))
	created := g.tenant(t, map[string]any{"name": "Small", "email": "small-sdk@example.com", "limits": map[string]any{"tokens": 1000}})
	counting, seen := countingProxy(t, g)
	client := openai.NewClient(option.WithBaseURL(counting+"/v1/"), option.WithAPIKey(created.Token.Token), option.WithMaxRetries(3))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	params := openai.ChatCompletionNewParams{
		Model:    "gpt-test",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello")},
	}
	served := 0
	for {
		seen.Store(0)
		_, err := client.Chat.Completions.New(ctx, params)
		if err == nil {
			served++
			if served > 20 {
				t.Fatal("served past the cap")
			}
			continue
		}
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusTooManyRequests || apiErr.Code != "quota_exceeded" {
			t.Fatalf("at the cap: %v", err)
		}
		if seen.Load() != 1 {
			t.Fatalf("the refused request was sent %d times", seen.Load())
		}
		t.Logf("served %d, then: %s", served, apiErr.Message)
		break
	}
	if served == 0 {
		t.Fatal("a 1,000-token tenant was never served")
	}
	if be.noMaxes.Load() != 0 {
		t.Fatal("a request reached the backend without a maximum")
	}
	if used := g.used(t, created.User.ID, "tokens"); used > 1000 {
		t.Fatalf("tokens used %d over the cap of 1000", used)
	}
}

// countingProxy is a proxy in front of the gateway that counts the requests
// it passes, to see whether a client retries.
func countingProxy(t *testing.T, g *gateway) (string, *atomic.Int64) {
	target, _ := url.Parse(g.url)
	seen := new(atomic.Int64)
	proxy := httputil.NewSingleHostReverseProxy(target)
	// No pooled connections: gateways of earlier tests may have had this
	// port (see client).
	proxy.Transport = &http.Transport{DisableKeepAlives: true}
	counting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(counting.Close)
	return counting.URL, seen
}
