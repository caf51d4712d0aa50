package caddymodule

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/llmusage"
)

// TestMeterWriterActual: what a response is charged, by what the backend
// said and whether the client stayed.
func TestMeterWriterActual(t *testing.T) {
	body, err := llmusage.ParseRequest([]byte(`{"messages":[{"role":"user","content":"` + strings.Repeat("w", 28) + `"}],"max_tokens":100}`))
	if err != nil {
		t.Fatal(err)
	}
	route := quota.Route{Reserve: quota.ReserveEstimate}
	plan := route.Plan(quota.MeterUses{}, quota.TokenRequest{API: quota.APIChat, Body: body})
	tests := []struct {
		name       string
		status     int
		header     http.Header
		body       string
		clientGone bool
		want       quota.TokenCount
	}{
		{"usage in the body", 200, http.Header{"Content-Type": {"application/json"}},
			`{"usage":{"prompt_tokens":5,"completion_tokens":9}}`, false, quota.TokenCount{Input: 5, Output: 9}},
		{"usage header wins and is removed", 200, http.Header{"Content-Type": {"application/json"}, "X-Usage-Tokens": {"input=1, output=2"}},
			`{"usage":{"prompt_tokens":5,"completion_tokens":9}}`, false, quota.TokenCount{Input: 1, Output: 2}},
		{"a bare total counts as output", 200, http.Header{"X-Usage-Tokens": {"12"}}, "ok", false, quota.TokenCount{Output: 12}},
		{"client gone mid-stream: the estimate", 200, http.Header{"Content-Type": {"text/event-stream"}},
			"data: {\"choices\":[{\"delta\":{\"content\":\"" + strings.Repeat("x", 70) + "\"}}]}\n\n", true, quota.TokenCount{Input: 7, Output: 29}}, // 116 bytes / 4, rounded up
		{"the estimate is capped by the reservation", 200, http.Header{"Content-Type": {"text/event-stream"}},
			"data: " + strings.Repeat("y", 1000) + "\n\n", true, quota.TokenCount{Input: 7, Output: 100}},
		{"a backend error without usage costs nothing", 500, http.Header{"Content-Type": {"application/json"}},
			`{"error":{"message":"boom"}}`, false, quota.TokenCount{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			m := &meterWriter{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: rec}, usageHeader: DefaultUsageHeader}
			for k, v := range tt.header {
				m.Header()[k] = v
			}
			m.WriteHeader(tt.status)
			// Several writes, as a stream arrives.
			for i := 0; i < len(tt.body); i += 16 {
				m.Write([]byte(tt.body[i:min(i+16, len(tt.body))]))
			}
			if got := plan.Tokens(m.outcome(tt.clientGone)); got != tt.want {
				t.Fatalf("charged %+v, want %+v", got, tt.want)
			}
			if rec.Body.String() != tt.body {
				t.Fatal("the body reaching the client changed")
			}
			if rec.Header().Get(DefaultUsageHeader) != "" {
				t.Fatal("the usage header reached the client")
			}
		})
	}
}

// TestRateLimitHeaders: the IETF httpapi fields, built by hand.
func TestRateLimitHeaders(t *testing.T) {
	now := time.Date(2026, 11, 23, 10, 0, 30, 0, time.UTC)
	h := http.Header{}
	setRateLimitHeaders(h, &quota.LimitState{Resource: "tokens.premium", Limit: quota.Limit{Limit: 100, Per: quota.Minute}, Used: 40, ResetsAt: now.Add(30 * time.Second)}, now)
	if p, r := h.Get("RateLimit-Policy"), h.Get("RateLimit"); p != `"tokens.premium-minute";q=100;w=60` || r != `"tokens.premium-minute";r=60;t=30` {
		t.Fatalf("windowed: %q %q", p, r)
	}
	setRateLimitHeaders(h, &quota.LimitState{Resource: "messages", Limit: quota.Limit{Limit: 3}, Used: 3}, now)
	if p, r := h.Get("RateLimit-Policy"), h.Get("RateLimit"); p != `"messages-lifetime";q=3` || r != `"messages-lifetime";r=0` {
		t.Fatalf("lifetime: %q %q", p, r)
	}
	// Policies are cached: one of another resource, period or limit is
	// never served for this one.
	for _, st := range []quota.LimitState{
		{Resource: "tokens.basic", Limit: quota.Limit{Limit: 100, Per: quota.Minute}},
		{Resource: "tokens.premium", Limit: quota.Limit{Limit: 101, Per: quota.Minute}},
		{Resource: "tokens.premium", Limit: quota.Limit{Limit: 100, Per: quota.Hour}},
		{Resource: "tokens.premium", Limit: quota.Limit{Limit: 100, Per: quota.Minute}},
	} {
		st.ResetsAt = now.Add(30 * time.Second)
		setRateLimitHeaders(h, &st, now)
		w := map[quota.Period]string{quota.Minute: "60", quota.Hour: "3600"}[st.Limit.Per]
		if p, want := h.Get("RateLimit-Policy"), fmt.Sprintf(`"%s-%s";q=%d;w=%s`, st.Resource, st.Limit.Per, st.Limit.Limit, w); p != want {
			t.Fatalf("cached policy: %q, want %q", p, want)
		}
	}
	// A name longer than the values' buffer.
	long := strings.Repeat("x", 300)
	setRateLimitHeaders(h, &quota.LimitState{Resource: long, Limit: quota.Limit{Limit: 3}, Used: 1}, now)
	if p, r := h.Get("RateLimit-Policy"), h.Get("RateLimit"); p != `"`+long+`-lifetime";q=3` || r != `"`+long+`-lifetime";r=2` {
		t.Fatalf("long name: %q %q", p, r)
	}
}
