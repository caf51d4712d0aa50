package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/tenantquota/caddy-tenant-quota/internal/redistest"
)

const webhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

// cloudEvent is what a webhook receives.
type cloudEvent struct {
	SpecVersion string          `json:"specversion"`
	ID          string          `json:"id"`
	Source      string          `json:"source"`
	Type        string          `json:"type"`
	Subject     string          `json:"subject"`
	Actor       string          `json:"actor"`
	Time        time.Time       `json:"time"`
	Data        json.RawMessage `json:"data"`
}

// hookReceiver is a webhook endpoint on loopback that verifies every
// delivery with the standard-webhooks library and takes only CloudEvents
// in structured mode, and can be told to fail.
type hookReceiver struct {
	*httptest.Server
	mu       sync.Mutex
	got      []cloudEvent
	attempts map[string]int
	down     atomic.Bool
	bad      atomic.Int64
}

func newHookReceiver(t *testing.T) *hookReceiver {
	wh, err := standardwebhooks.NewWebhook(webhookSecret)
	if err != nil {
		t.Fatal(err)
	}
	h := &hookReceiver{attempts: map[string]int{}}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := wh.Verify(body, r.Header); err != nil || r.Header.Get("Content-Type") != "application/cloudevents+json; charset=utf-8" {
			h.bad.Add(1)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		h.attempts[r.Header.Get("webhook-id")]++
		if h.down.Load() {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		var ce cloudEvent
		if json.Unmarshal(body, &ce) != nil || ce.ID != r.Header.Get("webhook-id") {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		h.got = append(h.got, ce)
	}))
	t.Cleanup(h.Close)
	return h
}

func (h *hookReceiver) events() []cloudEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]cloudEvent(nil), h.got...)
}

func (h *hookReceiver) ofUser(id string) []string {
	var types []string
	for _, e := range h.events() {
		if e.Subject == id {
			types = append(types, e.Type)
		}
	}
	return types
}

func eventsOpts(h *hookReceiver) string {
	return fmt.Sprintf("admin_key ops-admin-key-0123456789 {\n\t\t\tname ops\n\t\t}\n\t\tevents {\n\t\t\twebhook %s {\n\t\t\t\tsecret %s\n\t\t\t}\n\t\t\tthresholds 80 100\n\t\t}", h.URL, webhookSecret)
}

// TestEventsWebhook: every event type, through the real binary, reaches a
// webhook that verifies its signature, in order per user, with the named
// admin key as actor; GET /events lists the same. On both stores.
func TestEventsWebhook(t *testing.T) {
	t.Parallel()
	for _, st := range allStores() {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			h := newHookReceiver(t)
			g := startGateway(t, st.opts(t)+"\n\t\t"+eventsOpts(h), strings.TrimPrefix(newBackend(t).URL, "http://"))
			const ops = "ops-admin-key-0123456789"
			var created userResp
			wantStatus(t, call(t, "POST", g.url+"/quota/users", ops, map[string]any{"name": "Ev", "email": "ev@example.com", "issueToken": true, "limits": map[string]any{"messages": 5}}, &created), http.StatusCreated)
			uid, tok := created.User.ID, created.Token.Token
			user := g.url + "/quota/users/" + uid
			wantStatus(t, call(t, "PATCH", user, ops, map[string]any{"name": "Ev 2"}, nil), http.StatusOK)
			wantStatus(t, call(t, "PATCH", user+"/limits", ops, map[string]any{"messages": 10}, nil), http.StatusOK)
			wantStatus(t, call(t, "POST", user+"/credits", ops, map[string]any{"amount": 3}, nil), http.StatusOK)
			for range 10 {
				wantStatus(t, call(t, "POST", g.url+"/v1/chat", tok, map[string]any{}, nil), http.StatusOK)
			}
			wantStatus(t, call(t, "POST", user+"/usage/reset", ops, map[string]any{}, nil), http.StatusOK)
			wantStatus(t, call(t, "PATCH", user, ops, map[string]any{"status": "disabled"}, nil), http.StatusOK)
			wantStatus(t, call(t, "PATCH", user, adminKey, map[string]any{"status": "active"}, nil), http.StatusOK)
			wantStatus(t, call(t, "DELETE", user+"/tokens/"+created.Token.ID, ops, nil, nil), http.StatusNoContent)
			wantStatus(t, call(t, "DELETE", user, ops, nil, nil), http.StatusNoContent)
			want := []string{"user.created", "token.created", "user.updated", "user.updated", "limits.updated",
				"user.updated", "credits.added", "usage.threshold", "usage.threshold", "usage.reset",
				"user.updated", "user.disabled", "credits.zeroed", "user.updated", "user.enabled", "token.revoked", "user.deleted"}
			within(t, 5*time.Second, "every event delivered", func() bool { return len(h.ofUser(uid)) >= len(want) })
			if got := h.ofUser(uid); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("events in the order delivered:\n got %v\nwant %v", got, want)
			}
			for _, e := range h.events() {
				wantActor := "ops"
				switch {
				case e.Type == "usage.threshold":
					wantActor = ""
				case e.Type == "user.enabled" || e.Type == "user.updated" && strings.Contains(string(e.Data), `"status":"active"`) && !strings.Contains(string(e.Data), `"name":"Ev"`):
					wantActor = "" // checked below
				}
				if e.SpecVersion != "1.0" || e.Source != "caddy-tenant-quota" || e.ID == "" || e.Time.IsZero() {
					t.Fatalf("envelope %+v", e)
				}
				if wantActor == "ops" && e.Actor != "ops" {
					t.Fatalf("%s by the ops key has actor %q", e.Type, e.Actor)
				}
				if strings.Contains(string(e.Data), tok) || strings.Contains(e.Actor, "key-0123") {
					t.Fatalf("a secret in event %+v", e)
				}
			}
			var enabled []string
			for _, e := range h.events() {
				if e.Type == "user.enabled" {
					enabled = append(enabled, e.Actor)
				}
			}
			if fmt.Sprint(enabled) != "[default]" {
				t.Fatalf("the bare admin key's actor: %v", enabled)
			}
			if h.bad.Load() != 0 {
				t.Fatalf("%d deliveries failed signature verification or were not structured-mode CloudEvents", h.bad.Load())
			}
			var page struct {
				Items []cloudEvent `json:"items"`
			}
			wantStatus(t, call(t, "GET", g.url+"/quota/events?userId="+uid+"&take=100", adminKey, nil, &page), http.StatusOK)
			if len(page.Items) != len(want) {
				t.Fatalf("GET /events lists %d events", len(page.Items))
			}
			for i, e := range page.Items {
				if e.Type != want[i] {
					t.Fatalf("GET /events[%d] = %s, want %s", i, e.Type, want[i])
				}
			}
			wantStatus(t, call(t, "GET", g.url+"/quota/events?type=bogus", adminKey, nil, nil), http.StatusBadRequest)
		})
	}
}

// TestThresholdsExactlyOnce: 200 concurrent requests against a cap of 50,
// split across two gateways on one Redis, fire exactly one 80 % and one
// 100 % event; on the embedded store the same with one gateway.
func TestThresholdsExactlyOnce(t *testing.T) {
	t.Parallel()
	run := func(t *testing.T, a, b *gateway, h *hookReceiver) {
		c := a.tenant(t, map[string]any{"name": "C", "email": "c50@example.com", "limits": map[string]any{"messages": 50}})
		counts := burst(200, func(i int) *http.Request {
			g := a
			if i%2 == 1 {
				g = b
			}
			return tenantRequest(g.url+"/v1/chat", c.Token.Token, `{}`)
		})
		if counts[http.StatusOK] != 50 {
			t.Fatalf("answers %v", counts)
		}
		var pcts []string
		within(t, 5*time.Second, "two threshold events", func() bool {
			pcts = nil
			for _, e := range h.events() {
				if e.Type == "usage.threshold" && e.Subject == c.User.ID {
					var d struct{ Percent int }
					json.Unmarshal(e.Data, &d)
					pcts = append(pcts, fmt.Sprint(d.Percent))
				}
			}
			return len(pcts) >= 2
		})
		time.Sleep(300 * time.Millisecond) // a duplicate would arrive by now
		if got := h.ofUser(c.User.ID); strings.Count(fmt.Sprint(got), "usage.threshold") != 2 || fmt.Sprint(pcts) != "[80 100]" {
			t.Fatalf("threshold events %v (%v)", pcts, got)
		}
	}
	t.Run("embedded", func(t *testing.T) {
		t.Parallel()
		h := newHookReceiver(t)
		g := startGateway(t, eventsOpts(h), strings.TrimPrefix(newBackend(t).URL, "http://"))
		run(t, g, g, h)
	})
	t.Run("redis two gateways", func(t *testing.T) {
		t.Parallel()
		h := newHookReceiver(t)
		opts := "redis redis://" + redistest.Start(t).Addr() + "/0\n\t\t" + eventsOpts(h)
		be := strings.TrimPrefix(newBackend(t).URL, "http://")
		a, b := startGateway(t, opts, be), startGateway(t, opts, be)
		run(t, a, b, h)
	})
}

// TestEventsSurviveACrash: a gateway killed (SIGKILL) after a change while
// the receiver is down delivers the event after its restart, with the same
// id; a receiver that answers 500 for a while gets the event once it
// recovers, under the same webhook-id. On both stores.
func TestEventsSurviveACrash(t *testing.T) {
	t.Parallel()
	for _, st := range allStores() {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			h := newHookReceiver(t)
			h.down.Store(true)
			g := startGateway(t, st.opts(t)+"\n\t\t"+eventsOpts(h), strings.TrimPrefix(newBackend(t).URL, "http://"))
			c := g.tenant(t, map[string]any{"name": "K", "email": "kill@example.com"})
			eventually(t, "a failed attempt", func() bool {
				h.mu.Lock()
				defer h.mu.Unlock()
				return len(h.attempts) > 0
			})
			g.kill()
			if len(h.events()) != 0 {
				t.Fatal("an event was taken while the receiver was down")
			}
			h.down.Store(false)
			g.start(t, g.caddyfile)
			// On Redis the killed node's delivery lease (10s) must lapse first.
			within(t, 20*time.Second, "the events after the restart", func() bool { return len(h.ofUser(c.User.ID)) >= 2 })
			h.mu.Lock()
			defer h.mu.Unlock()
			first := h.got[0]
			if first.Type != "user.created" || h.attempts[first.ID] < 2 {
				t.Fatalf("delivered %s after %d attempts", first.Type, h.attempts[first.ID])
			}
			seen := map[string]bool{}
			for _, e := range h.got {
				if seen[e.ID] {
					t.Fatalf("event %s taken twice", e.ID)
				}
				seen[e.ID] = true
			}
		})
	}
}
