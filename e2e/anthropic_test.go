package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go"
	"github.com/anthropics/anthropic-sdk-go/option"
)

// messagesBackend streams Anthropic Messages events: usage in
// message_start (input) and message_delta (output), and records the auth
// headers it receives.
func messagesBackend(t *testing.T, seenKeys *[]string) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		*seenKeys = append(*seenKeys, r.Header.Get("X-Api-Key")+r.Header.Get("Authorization")+r.Header.Get("Api-Key"))
		w.Header().Set("Content-Type", "text/event-stream")
		events := []string{
			`event: message_start` + "\n" + `data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-test","content":[],"stop_reason":null,"usage":{"input_tokens":12,"output_tokens":1}}}`,
			`event: content_block_start` + "\n" + `data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`,
			`event: content_block_delta` + "\n" + `data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}`,
			`event: content_block_stop` + "\n" + `data: {"type":"content_block_stop","index":0}`,
			`event: message_delta` + "\n" + `data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":8}}`,
			`event: message_stop` + "\n" + `data: {"type":"message_stop"}`,
		}
		for _, e := range events {
			fmt.Fprintf(w, "%s\n\n", e)
			w.(http.Flusher).Flush()
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestAnthropicClient drives the gateway with the official Anthropic Go
// SDK, which sends its key in x-api-key: the key is accepted and removed
// before the backend, the stream's usage is metered, and at the cap the
// SDK gets one clean error that it does not retry.
func TestAnthropicClient(t *testing.T) {
	t.Parallel()
	var keys []string
	be := messagesBackend(t, &keys)
	g := startGateway(t, "", strings.TrimPrefix(be.URL, "http://"))
	c := g.tenant(t, map[string]any{"name": "An", "email": "anthropic@example.com", "limits": map[string]any{"messages": 2}})
	// Streams go straight to the gateway; the refusal at the cap through a
	// proxy that counts what reaches the gateway.
	client := anthropic.NewClient(option.WithBaseURL(g.url), option.WithAPIKey(c.Token.Token), option.WithMaxRetries(3))
	counting, seen := countingProxy(t, g)
	capped := anthropic.NewClient(option.WithBaseURL(counting), option.WithAPIKey(c.Token.Token), option.WithMaxRetries(3))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	params := anthropic.MessageNewParams{
		Model:     "claude-test",
		MaxTokens: 100,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))},
	}
	for i := range 2 {
		stream := client.Messages.NewStreaming(ctx, params)
		var text strings.Builder
		for stream.Next() {
			if ev := stream.Current(); ev.Type == "content_block_delta" {
				text.WriteString(ev.Delta.Text)
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatalf("stream %d: %v\ngateway log:\n%s", i, err, g.logs)
		}
		if text.String() != "Hello" {
			t.Fatalf("stream %d text %q", i, text.String())
		}
	}
	if got := g.used(t, c.User.ID, "tokens"); got != 40 {
		t.Fatalf("tokens after two streams = %d, want 40 (12 in + 8 out, twice)", got)
	}
	for _, k := range keys {
		if k != "" {
			t.Fatalf("the tenant's key reached the backend: %q", k)
		}
	}
	seen.Store(0)
	_, err := capped.Messages.New(ctx, params)
	var apiErr *anthropic.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("at the cap: %v", err)
	}
	if seen.Load() != 1 {
		t.Fatalf("the refused request was sent %d times", seen.Load())
	}
}

// TestTokenHeaders: the token is taken from Authorization, x-api-key or
// api-key, the first present; token_header changes the list; every listed
// header is removed before the backend.
func TestTokenHeaders(t *testing.T) {
	t.Parallel()
	be := newBackend(t)
	g := startGateway(t, "", strings.TrimPrefix(be.URL, "http://"))
	c := g.tenant(t, map[string]any{"name": "H", "email": "headers@example.com"})
	send := func(g *gateway, header, value string) int {
		req, _ := http.NewRequest("POST", g.url+"/v1/chat", strings.NewReader(`{}`))
		req.Header.Set(header, value)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, h := range []struct{ name, value string }{{"Authorization", "Bearer " + c.Token.Token}, {"x-api-key", c.Token.Token}, {"api-key", c.Token.Token}} {
		if s := send(g, h.name, h.value); s != http.StatusOK {
			t.Fatalf("token in %s: %d", h.name, s)
		}
	}
	if s := send(g, "X-Tenant-Key", c.Token.Token); s != http.StatusUnauthorized {
		t.Fatalf("token in an unlisted header: %d", s)
	}
	custom := startGatewayWith(t, "", "", "token_header X-Tenant-Key", strings.TrimPrefix(be.URL, "http://"))
	cc := custom.tenant(t, map[string]any{"name": "H2", "email": "headers2@example.com"})
	if s := send(custom, "X-Tenant-Key", cc.Token.Token); s != http.StatusOK {
		t.Fatalf("token_header X-Tenant-Key: %d", s)
	}
	if s := send(custom, "x-api-key", cc.Token.Token); s != http.StatusUnauthorized {
		t.Fatalf("x-api-key with a custom list: %d", s)
	}
}

// TestTenantFacingText: authentication errors read as sentences without Go
// error-chain suffixes, and GET /quota (no trailing slash) reaches the
// admin API through the example's redirect.
func TestTenantFacingText(t *testing.T) {
	t.Parallel()
	g := startGatewayWith(t, "", "redir /quota /quota/ 308", "", strings.TrimPrefix(newBackend(t).URL, "http://"))
	c := g.tenant(t, map[string]any{"name": "E", "email": "text@example.com"})
	wantStatus(t, call(t, "DELETE", g.url+"/quota/users/"+c.User.ID+"/tokens/"+c.Token.ID, adminKey, nil, nil), http.StatusNoContent)
	var e openAIErr
	wantStatus(t, call(t, "POST", g.url+"/v1/chat", c.Token.Token, map[string]any{}, &e), http.StatusUnauthorized)
	if strings.Contains(e.Error.Message, "unauthenticated") || !strings.HasSuffix(e.Error.Message, ".") {
		t.Fatalf("message %q", e.Error.Message)
	}
	req, _ := http.NewRequest("GET", g.url+"/quota", nil)
	req.Header.Set("Authorization", "Bearer "+adminKey)
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != "/quota/" {
		t.Fatalf("GET /quota: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	// The OpenAPI document needs no key.
	doc, err := http.Get(g.url + "/quota/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		OpenAPI string `json:"openapi"`
	}
	err = json.NewDecoder(doc.Body).Decode(&d)
	doc.Body.Close()
	if err != nil || doc.StatusCode != http.StatusOK || d.OpenAPI != "3.1.0" {
		t.Fatalf("GET /quota/openapi.json: %d %+v %v", doc.StatusCode, d, err)
	}
}
