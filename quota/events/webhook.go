package events

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// SecretPrefix starts a Standard Webhooks secret: whsec_ and the base64
// of the key.
const SecretPrefix = "whsec_"

// ParseSecret decodes a whsec_<base64> secret into its HMAC key.
func ParseSecret(s string) ([]byte, error) {
	b64, ok := strings.CutPrefix(s, SecretPrefix)
	if !ok {
		return nil, fmt.Errorf("a webhook secret starts with %s", SecretPrefix)
	}
	key, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(key) < 16 {
		return nil, errors.New("a webhook secret is " + SecretPrefix + " and the base64 of at least 16 random bytes")
	}
	return key, nil
}

// Webhook posts events to a URL, signed per the Standard Webhooks
// specification: webhook-id (the event id, the same on every attempt),
// webhook-timestamp (Unix seconds of the attempt) and webhook-signature
// ("v1,<base64 HMAC-SHA256 of id.timestamp.body>", one per secret, space
// separated, for rotation). A 2xx answer takes the event; anything else,
// a redirect included, or no answer within the timeout, is retried.
type Webhook struct {
	name   string
	url    string
	keys   [][]byte
	types  Types
	client *http.Client
}

// WebhookOptions configure NewWebhook.
type WebhookOptions struct {
	// Name is the sink's cursor name (default "webhook:" + URL).
	Name string
	URL  string
	// Secrets are whsec_ secrets; the first signs, all sign during a
	// rotation. At least one is required.
	Secrets []string
	Types   Types
	// Timeout bounds one attempt (default 10s).
	Timeout time.Duration
}

// NewWebhook returns a webhook sink.
func NewWebhook(opts WebhookOptions) (*Webhook, error) {
	if !strings.HasPrefix(opts.URL, "https://") && !strings.HasPrefix(opts.URL, "http://") {
		return nil, fmt.Errorf("webhook: %q is not an http(s) URL", opts.URL)
	}
	if len(opts.Secrets) == 0 {
		return nil, errors.New("webhook: a secret is required (whsec_ and base64)")
	}
	w := &Webhook{name: opts.Name, url: opts.URL, types: opts.Types}
	if w.name == "" {
		w.name = "webhook:" + opts.URL
	}
	for i, s := range opts.Secrets {
		key, err := ParseSecret(s)
		if err != nil {
			return nil, fmt.Errorf("webhook %s: secret #%d: %w", opts.URL, i+1, err)
		}
		w.keys = append(w.keys, key)
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	w.client = &http.Client{
		Timeout: timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	return w, nil
}

// Name implements Sink.
func (w *Webhook) Name() string { return w.name }

// Accepts implements Sink.
func (w *Webhook) Accepts(typ string) bool { return w.types.Match(typ) }

// Sign returns the webhook-signature header value for one attempt.
func (w *Webhook) Sign(id string, ts int64, body []byte) string {
	sigs := make([]string, len(w.keys))
	for i, k := range w.keys {
		mac := hmac.New(sha256.New, k)
		fmt.Fprintf(mac, "%s.%d.", id, ts)
		mac.Write(body)
		sigs[i] = "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
	}
	return strings.Join(sigs, " ")
}

// Deliver implements Sink.
func (w *Webhook) Deliver(ctx context.Context, ev quota.CloudEvent, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	ts := time.Now().Unix()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "caddy-tenant-quota")
	req.Header.Set("webhook-id", ev.ID)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
	req.Header.Set("webhook-signature", w.Sign(ev.ID, ts, body))
	resp, err := w.client.Do(req)
	if err != nil {
		return fmt.Errorf("webhook %s: %w", w.url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("webhook %s answered %d", w.url, resp.StatusCode)
	}
	return nil
}

// Types selects event types: exact names and prefixes ending in ".*"
// ("user.*"); empty selects every type.
type Types []string

// Match reports whether typ is selected.
func (t Types) Match(typ string) bool {
	if len(t) == 0 {
		return true
	}
	for _, p := range t {
		if p == typ || strings.HasSuffix(p, "*") && strings.HasPrefix(typ, strings.TrimSuffix(p, "*")) {
			return true
		}
	}
	return false
}

// Validate checks that every pattern names a known type or prefix.
func (t Types) Validate() error {
	for _, p := range t {
		ok := false
		for _, typ := range quota.EventTypes {
			if p == typ || strings.HasSuffix(p, "*") && strings.HasPrefix(typ, strings.TrimSuffix(p, "*")) {
				ok = true
			}
		}
		if !ok {
			return fmt.Errorf("event type %q matches no event type (%s)", p, strings.Join(quota.EventTypes, ", "))
		}
	}
	return nil
}
