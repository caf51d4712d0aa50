package events_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/tenantquota/caddy-tenant-quota/internal/quotatest"
	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/events"
)

// checkCloudEvent fails the test unless got, the event the CloudEvents SDK
// read from a delivery, is a valid CloudEvents 1.0 event with the
// attributes and data of sent, the delivery's JSON.
func checkCloudEvent(t *testing.T, got *event.Event, sent []byte) {
	t.Helper()
	if err := got.Validate(); err != nil {
		t.Fatalf("the SDK finds the event invalid: %v", err)
	}
	var want quota.CloudEvent
	if err := json.Unmarshal(sent, &want); err != nil {
		t.Fatal(err)
	}
	if got.SpecVersion() != event.CloudEventsVersionV1 || want.SpecVersion != "1.0" || got.ID() != want.ID || got.Type() != want.Type ||
		got.Source() != want.Source || got.Subject() != want.Subject || !got.Time().Equal(want.Time) {
		t.Fatalf("the SDK read %s from %s", got, sent)
	}
	if got.DataContentType() != "application/json" {
		t.Fatalf("datacontenttype %q, want application/json", got.DataContentType())
	}
	if actor, _ := got.Extensions()["actor"].(string); actor != want.Actor {
		t.Fatalf("actor extension %q, want %q", actor, want.Actor)
	}
	var gotData, wantData any
	if err := got.DataAs(&gotData); err != nil {
		t.Fatalf("data: %v", err)
	}
	if err := json.Unmarshal(want.Data, &wantData); err != nil {
		t.Fatal(err)
	}
	if g, w := mustJSON(t, gotData), mustJSON(t, wantData); g != w {
		t.Fatalf("data %s, want %s", g, w)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestWebhookDeliveryIsStructuredCloudEvent: the CloudEvents SDK's HTTP
// binding reads a webhook delivery as a structured-mode CloudEvent (before,
// Content-Type application/json made it read none), valid, with the
// attributes and data of the body sent and of the change it reports; the
// standard-webhooks signature over the same body still verifies.
func TestWebhookDeliveryIsStructuredCloudEvent(t *testing.T) {
	t.Parallel()
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	type delivery struct {
		body     []byte
		encoding binding.Encoding
		ev       *event.Event
		err      error
	}
	var (
		mu  sync.Mutex
		got []delivery
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := wh.Verify(body, r.Header); err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		msg := cehttp.NewMessageFromHttpRequest(r)
		d := delivery{body: body, encoding: msg.ReadEncoding()}
		d.ev, d.err = binding.ToEvent(r.Context(), msg)
		mu.Lock()
		got = append(got, d)
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)

	store, svc := quotatest.Embedded(t)
	hook, err := events.NewWebhook(events.WebhookOptions{URL: srv.URL, Secrets: []string{secret}})
	if err != nil {
		t.Fatal(err)
	}
	d, err := events.New(events.Options{Log: store, Sinks: []events.Sink{hook}, Holder: "test", Poll: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	run(t, d)
	u, err := svc.CreateUser(quota.WithActor(context.Background(), "ops"), quota.NewUser{Name: "C", Email: "c@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	d.Kick()
	waitFor(t, "the event delivered", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 1 })

	mu.Lock()
	defer mu.Unlock()
	if got[0].err != nil {
		t.Fatalf("the SDK reads no event: %v", got[0].err)
	}
	if got[0].encoding != binding.EncodingStructured {
		t.Fatalf("the SDK reads the delivery in encoding %v, want structured", got[0].encoding)
	}
	checkCloudEvent(t, got[0].ev, got[0].body)
	ev := got[0].ev
	if ev.Type() != quota.EventUserCreated || ev.Subject() != u.ID || ev.Source() != quota.DefaultEventSource ||
		ev.Extensions()["actor"] != "ops" {
		t.Fatalf("the SDK read %s, want the user.created of %s by ops", ev, u.ID)
	}
}
