package events

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
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

// ContentType is the media type of a delivery, on a webhook's Content-Type
// and a Kafka record's content-type header: a CloudEvent in the JSON event
// format, structured mode. The CloudEvents SDKs read a body sent as
// application/json as no event at all.
const ContentType = "application/cloudevents+json; charset=utf-8"

// Webhook posts events to a URL as CloudEvents in structured mode
// (Content-Type: ContentType), signed per the Standard Webhooks
// specification: webhook-id (the event id, the same on every attempt),
// webhook-timestamp (Unix seconds of the attempt) and webhook-signature
// ("v1,<base64 HMAC-SHA256 of id.timestamp.body>", one per secret, space
// separated, for rotation). A 2xx answer takes the event; anything else,
// a redirect included, or no answer within the timeout, is retried.
//
// The URL may carry credentials (userinfo, a token in the query): errors,
// String and the default Name show it as RedactURL does.
type Webhook struct {
	name   string
	former string // the name an older version gave the default cursor
	url    string
	shown  string // url without userinfo, query and fragment
	keys   [][]byte
	types  Types
	client *http.Client
}

// WebhookOptions configure NewWebhook.
type WebhookOptions struct {
	// Name is the sink's cursor name. The default is "webhook:" and the
	// URL, or, when the URL carries a userinfo, a query or a fragment,
	// "webhook:", RedactURL's URL, "#" and a hash of the whole URL: a
	// changed URL is a new sink, and the store never holds its secrets.
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
	shown := RedactURL(opts.URL)
	// url.Parse's error quotes the URL: it is not passed on.
	if u, err := url.Parse(opts.URL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("webhook: %s is not an http(s) URL", shown)
	}
	if len(opts.Secrets) == 0 {
		return nil, errors.New("webhook: a secret is required (whsec_ and base64)")
	}
	w := &Webhook{name: opts.Name, url: opts.URL, shown: shown, types: opts.Types}
	if w.name == "" {
		w.name = "webhook:" + opts.URL
		if shown != opts.URL {
			sum := sha256.Sum256([]byte(opts.URL))
			w.former, w.name = w.name, "webhook:"+shown+"#"+hex.EncodeToString(sum[:8])
		}
	}
	for i, s := range opts.Secrets {
		key, err := ParseSecret(s)
		if err != nil {
			return nil, fmt.Errorf("webhook %s: secret #%d: %w", shown, i+1, err)
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

// FormerName is the cursor name versions before hashed names gave this
// webhook ("webhook:" and the whole URL), whose cursors it takes over when
// it has none; "" when that is its name still, or it was given one.
func (w *Webhook) FormerName() string { return w.former }

// String names the webhook for logs: "webhook:" and the URL as RedactURL
// shows it.
func (w *Webhook) String() string { return "webhook:" + w.shown }

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
		return w.redact(err)
	}
	ts := time.Now().Unix()
	req.Header.Set("Content-Type", ContentType)
	req.Header.Set("User-Agent", "caddy-tenant-quota")
	req.Header.Set("webhook-id", ev.ID)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
	req.Header.Set("webhook-signature", w.Sign(ev.ID, ts, body))
	resp, err := w.client.Do(req)
	if err != nil {
		return w.redact(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("webhook %s answered %d", w.shown, resp.StatusCode)
	}
	return nil
}

// redact wraps an error of net/http, whose *url.Error quotes the whole
// URL, with the URL as RedactURL shows it instead.
func (w *Webhook) redact(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("webhook: %w", &url.Error{Op: ue.Op, URL: w.shown, Err: ue.Err})
	}
	return fmt.Errorf("webhook %s: %w", w.shown, err)
}

// RedactURL returns rawURL as it may be shown in an error or a log line:
// without its userinfo, query and fragment ("https://host/hook"), and
// with every path segment of 16 characters or more shown as "…": the
// tokens that Slack- and Discord-style hook URLs carry in their path
// (/services/T0/B0/<token>, /api/webhooks/<id>/<token>). What
// does not parse as an absolute URL is shown as it is if it has no '@',
// '?' or '#' (a placeholder such as {env.TQ_WEBHOOK_URL}), else not at
// all.
func RedactURL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme == "" || u.Host == "" || u.Opaque != "" {
		if strings.ContainsAny(rawURL, "@?#") {
			return "(a URL that does not parse)"
		}
		return rawURL
	}
	u.User, u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = nil, "", false, "", ""
	segs := strings.Split(u.EscapedPath(), "/")
	for i, s := range segs {
		if len(s) >= 16 {
			segs[i] = "…"
		}
	}
	u.Path, u.RawPath = "", ""
	return u.String() + strings.Join(segs, "/")
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
