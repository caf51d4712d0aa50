package events_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tenantquota/caddy-tenant-quota/internal/quotatest"
	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/events"
)

// The credentials a webhook URL carries in the tests below; no error and
// no log line may show them.
const (
	hookPassword = "s3cretpass"
	hookToken    = "tok3n-in-query"
)

// logText is everything the observed entries say, fields included.
func logText(logs *observer.ObservedLogs) string {
	var b strings.Builder
	for _, e := range logs.All() {
		enc := zapcore.NewMapObjectEncoder()
		for _, f := range e.Context {
			f.AddTo(enc)
		}
		fmt.Fprintf(&b, "%s %v\n", e.Message, enc.Fields)
	}
	return b.String()
}

// TestWebhookURLSecretsNeverShown: a delivery that fails, whether the
// endpoint refuses the connection or answers 500, reports and logs the
// webhook as scheme://host/path, never with its userinfo or its query.
func TestWebhookURLSecretsNeverShown(t *testing.T) {
	t.Parallel()
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
	}))
	t.Cleanup(failing.Close)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := l.Addr().String()
	l.Close()

	for _, tt := range []struct {
		name, host string
	}{
		{"answers 500", strings.TrimPrefix(failing.URL, "http://")},
		{"refuses the connection", refused},
	} {
		t.Run(tt.name, func(t *testing.T) {
			raw := fmt.Sprintf("http://hook-user:%s@%s/hook?token=%s#frag", hookPassword, tt.host, hookToken)
			shown := fmt.Sprintf("http://%s/hook", tt.host)
			hook, err := events.NewWebhook(events.WebhookOptions{URL: raw, Secrets: []string{secret}, Timeout: 2 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range []string{hook.Name(), fmt.Sprint(hook)} {
				if strings.Contains(s, hookPassword) || strings.Contains(s, hookToken) {
					t.Fatalf("the sink shows its URL's secrets: %q", s)
				}
			}
			err = hook.Deliver(context.Background(), quota.CloudEvent{ID: "e1"}, []byte(`{}`))
			if err == nil {
				t.Fatal("the delivery did not fail")
			}
			if msg := err.Error(); strings.Contains(msg, hookPassword) || strings.Contains(msg, hookToken) || !strings.Contains(msg, shown) {
				t.Fatalf("the error %q shows the URL's secrets or not %s", msg, shown)
			}

			// Through the dispatcher: its log lines, on retry and on giving up.
			store, svc := quotatest.Embedded(t)
			core, logs := observer.New(zap.DebugLevel)
			d, err := events.New(events.Options{Log: store, Sinks: []events.Sink{hook}, Holder: "test", Poll: 10 * time.Millisecond,
				Logger: zap.New(core), Retry: events.Retry{Min: time.Millisecond, Max: 2 * time.Millisecond, Attempts: 2}})
			if err != nil {
				t.Fatal(err)
			}
			run(t, d)
			if _, err := svc.CreateUser(context.Background(), quota.NewUser{Name: "S", Email: "s@example.com"}); err != nil {
				t.Fatal(err)
			}
			d.Kick()
			waitFor(t, "the event given up", func() bool { return d.Stats().GaveUp == 1 })
			text := logText(logs)
			if strings.Contains(text, hookPassword) || strings.Contains(text, hookToken) {
				t.Fatalf("the log shows the URL's secrets:\n%s", text)
			}
			if !strings.Contains(text, shown) {
				t.Fatalf("the log does not say which webhook (%s):\n%s", shown, text)
			}
		})
	}
}

// TestNewWebhookErrorsHideURLSecrets: a configuration error names the
// webhook without its secrets.
func TestNewWebhookErrorsHideURLSecrets(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		opts events.WebhookOptions
	}{
		{"bad secret", events.WebhookOptions{URL: "https://u:" + hookPassword + "@example.com/h?token=" + hookToken, Secrets: []string{"whsec_!!"}}},
		{"not http", events.WebhookOptions{URL: "ftp://u:" + hookPassword + "@example.com/h?token=" + hookToken, Secrets: []string{secret}}},
		{"does not parse", events.WebhookOptions{URL: "https://u:" + hookPassword + "@exa mple.com/h?token=" + hookToken, Secrets: []string{secret}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := events.NewWebhook(tt.opts)
			if err == nil {
				t.Fatal("accepted")
			}
			if msg := err.Error(); strings.Contains(msg, hookPassword) || strings.Contains(msg, hookToken) {
				t.Fatalf("the error shows the URL's secrets: %q", msg)
			}
		})
	}
}

func TestRedactURL(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ in, want string }{
		{"https://example.com/hook", "https://example.com/hook"},
		{"https://user:pass@example.com:8443/hook?token=t#f", "https://example.com:8443/hook"},
		{"https://user@example.com/hook?", "https://example.com/hook"},
		{"https://hooks.slack.com/services/T0001/B0001/XXXXXXXXXXXXXXXXXXXXXXXX", "https://hooks.slack.com/services/T0001/B0001/…"},
		{"https://discord.com/api/webhooks/123456789012345678/abcdefghijklmnopqrstuvwxyz0123456789", "https://discord.com/api/webhooks/…/…"},
		{"https://example.com", "https://example.com"},
		{"{env.TQ_WEBHOOK_URL}", "{env.TQ_WEBHOOK_URL}"},
		{"https://user:pa#ss@example.com/hook", "(a URL that does not parse)"},
		{"https:user:pass@example.com", "(a URL that does not parse)"},
		{"https://u:p@exa mple.com/?t=1", "(a URL that does not parse)"},
	} {
		if got := events.RedactURL(tt.in); got != tt.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
