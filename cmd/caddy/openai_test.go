package main

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
	be, _ := llmBackend(t)
	g := startGateway(t, "", strings.TrimPrefix(be.URL, "http://"))
	created := g.tenant(t, map[string]any{
		"name": "SDK", "email": "sdk@example.com", "issueToken": true, "limits": map[string]any{"messages": 2},
	})

	// Count what reaches the gateway, to see whether the client retries.
	target, _ := url.Parse(g.url)
	var seen atomic.Int64
	proxy := httputil.NewSingleHostReverseProxy(target)
	counting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(counting.Close)

	client := openai.NewClient(option.WithBaseURL(counting.URL+"/v1/"), option.WithAPIKey(created.Token.Token), option.WithMaxRetries(3))
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
	if got := g.used(t, created.User.ID, "tokens"); got != 48 {
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
