package caddymodule

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestEventsErrorsHideWebhookURLSecrets: a configuration error about a
// webhook names it without the userinfo or query of its URL.
func TestEventsErrorsHideWebhookURLSecrets(t *testing.T) {
	const url = "https://hook-user:s3cretpass@example.com/hook?token=tok3n-in-query"
	const good = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	for _, tt := range []struct {
		name string
		err  func() error
	}{
		{"unknown type", func() error {
			c := EventsConfig{Webhooks: []WebhookConfig{{URL: url, Secrets: []string{good}, Types: []string{"nope"}}}}
			return c.validate()
		}},
		{"no secret", func() error {
			return (&EventsConfig{Webhooks: []WebhookConfig{{URL: url}}}).validate()
		}},
		{"empty secret", func() error {
			return (&EventsConfig{Webhooks: []WebhookConfig{{URL: url, Secrets: []string{"{env.TQ_TEST_UNSET_SECRET}"}}}}).checkSecrets(caddy.NewReplacer())
		}},
		{"bad secret", func() error {
			return (&EventsConfig{Webhooks: []WebhookConfig{{URL: url, Secrets: []string{"whsec_!!"}}}}).checkSecrets(caddy.NewReplacer())
		}},
		{"empty secret when built", func() error {
			_, err := (&EventsConfig{Webhooks: []WebhookConfig{{URL: url, Secrets: []string{"{env.TQ_TEST_UNSET_SECRET}"}}}}).sinks(caddy.NewReplacer())
			return err
		}},
		{"Caddyfile without a secret", func() error {
			var c EventsConfig
			d := caddyfile.NewTestDispenser("events {\n\twebhook " + url + " {\n\t\ttypes user.*\n\t}\n}")
			d.Next()
			return c.unmarshal(d)
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.err()
			if err == nil {
				t.Fatal("no error")
			}
			if msg := err.Error(); strings.Contains(msg, "s3cretpass") || strings.Contains(msg, "tok3n") || !strings.Contains(msg, "https://example.com/hook") {
				t.Fatalf("the error %q shows the URL's secrets or not the webhook", msg)
			}
		})
	}
}
