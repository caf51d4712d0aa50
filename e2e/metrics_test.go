package e2e

import (
	"bufio"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// scrape reads Caddy's admin /metrics and returns the exposition and the
// value of each sample line (name{labels} -> value).
func scrape(t *testing.T, g *gateway) (string, map[string]float64) {
	t.Helper()
	resp, err := http.Get("http://" + g.adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	samples := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || !strings.HasPrefix(line, "caddy_tenant_quota_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			samples[line[:i]] = v
		}
	}
	return string(body), samples
}

// TestMetrics: after known traffic, the real binary's admin /metrics has
// the plugin's metrics, moved by the right amounts, with bounded labels,
// and the exposition passes promlint.
func TestMetrics(t *testing.T) {
	t.Parallel()
	for _, st := range allStores() {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			be := newHonestBackend(t)
			g := startGatewayWith(t, st.opts(t), "", "credits messages 1", strings.TrimPrefix(be.URL, "http://"))
			c := g.tenant(t, map[string]any{"name": "M", "email": "metrics@example.com", "credits": 100, "limits": map[string]any{"messages": 3}})
			for range 3 {
				wantStatus(t, call(t, "POST", g.url+"/v1/chat/completions", c.Token.Token, map[string]any{"model": "m", "max_tokens": 5, "messages": []any{map[string]any{"role": "user", "content": "hi"}}}, nil), http.StatusOK)
			}
			wantStatus(t, call(t, "POST", g.url+"/v1/chat/completions", c.Token.Token, map[string]any{"max_tokens": 5}, nil), http.StatusTooManyRequests)
			wantStatus(t, call(t, "POST", g.url+"/v1/chat/completions", "tq_garbage", map[string]any{}, nil), http.StatusUnauthorized)
			wantStatus(t, call(t, "POST", g.url+"/v1/chat/completions", c.Token.Token, map[string]any{"max_tokens": -1}, nil), http.StatusBadRequest)
			text, s := scrape(t, g)
			want := map[string]float64{
				`caddy_tenant_quota_requests_total{outcome="admitted"}`:                   3,
				`caddy_tenant_quota_requests_total{outcome="limited"}`:                    1,
				`caddy_tenant_quota_requests_total{outcome="unauthenticated"}`:            1,
				`caddy_tenant_quota_requests_total{outcome="bad_request"}`:                1,
				`caddy_tenant_quota_limited_total{period="lifetime",resource="messages"}`: 1,
				`caddy_tenant_quota_credits_spent_total`:                                  3,
				`caddy_tenant_quota_reservations_outstanding`:                             0,
				`caddy_tenant_quota_breaker_open`:                                         0,
				`caddy_tenant_quota_journal_depth`:                                        0,
				`caddy_tenant_quota_events_written_total{type="user.created"}`:            1,
				`caddy_tenant_quota_events_written_total{type="token.created"}`:           1,
			}
			for k, v := range want {
				if s[k] != v {
					t.Errorf("%s = %v, want %v", k, s[k], v)
				}
			}
			// The honest backend reports 4+3+2 prompt tokens and the 5 sent
			// as the maximum, per request.
			if s[`caddy_tenant_quota_llm_tokens_total{direction="output"}`] != 15 || s[`caddy_tenant_quota_llm_tokens_total{direction="input"}`] == 0 {
				t.Errorf("tokens: %v / %v", s[`caddy_tenant_quota_llm_tokens_total{direction="input"}`], s[`caddy_tenant_quota_llm_tokens_total{direction="output"}`])
			}
			if s[`caddy_tenant_quota_cache_hits_total`] == 0 {
				t.Error("no cache hit counted")
			}
			kind := "embedded"
			if st.name == "redis" {
				kind = "redis"
			}
			if s[`caddy_tenant_quota_store_duration_seconds_count{operation="admit",store="`+kind+`"}`] < 4 {
				t.Errorf("admit durations observed: %v", s[`caddy_tenant_quota_store_duration_seconds_count{operation="admit",store="`+kind+`"}`])
			}
			if strings.Contains(text, c.User.ID) || strings.Contains(text, c.Token.Token) || strings.Contains(text, "metrics@example.com") {
				t.Fatal("a user id, token or email in a metric")
			}
			var ours strings.Builder
			for _, line := range strings.Split(text, "\n") {
				if strings.Contains(line, "caddy_tenant_quota_") {
					ours.WriteString(line + "\n")
				}
			}
			problems, err := promlint.New(strings.NewReader(ours.String())).Lint()
			if err != nil || len(problems) > 0 {
				t.Fatalf("promlint: %v %+v", err, problems)
			}
		})
	}
}
