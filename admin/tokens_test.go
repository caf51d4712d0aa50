package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tenantquota/caddy-tenant-quota/internal/redistest"
	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/redisstore"
)

// TestUpdateToken: GET and PATCH of one token on both stores — name,
// expiry and limits change (limits merged, null removes), the change
// holds for authentication at once, a token.updated event records it,
// and every bad input is a 400 naming its field that changes nothing.
func TestUpdateToken(t *testing.T) {
	t.Parallel()
	t.Run("embedded", func(t *testing.T) { testUpdateToken(t, newEnv(t)) })
	t.Run("redis", func(t *testing.T) {
		srv := redistest.Start(t)
		store, err := redisstore.New(redisstore.Options{Client: srv.Client(t), Timeout: redistest.Timeout})
		if err != nil {
			t.Fatal(err)
		}
		testUpdateToken(t, newEnvOn(t, store))
	})
}

func testUpdateToken(t *testing.T, e *env) {
	ctx := context.Background()
	u := e.createUser(t, `{"name": "A", "email": "a@example.com"}`)
	base := "/users/" + u.ID + "/tokens"
	var issued map[string]any
	e.call(t, "POST", base, `{"name": "laptop", "scopes": ["chat"], "limits": {"messages": 100, "tokens": {"limit": 5000, "per": "day"}}}`, http.StatusCreated).decode(t, &issued)
	secret := issued["token"].(string)
	path := base + "/" + issued["id"].(string)
	// The token is in the hot cache before it changes.
	if p, err := e.svc.Authenticate(ctx, secret); err != nil || p.Token.Limits["messages"][0].Limit != 100 {
		t.Fatalf("authenticate before: %+v %v", p, err)
	}

	got := e.call(t, "GET", path, "", http.StatusOK)
	if strings.Contains(string(got.body), secret) || strings.Contains(string(got.body), `"hash"`) {
		t.Fatalf("GET shows the secret or its hash: %s", got.body)
	}
	var tok quota.Token
	got.decode(t, zeroed(&tok))
	if tok.ID != issued["id"] || tok.Name != "laptop" || tok.Revision != 0 || len(tok.Scopes) != 1 || tok.Limits["messages"][0].Limit != 100 {
		t.Fatalf("GET: %+v", tok)
	}

	exp := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)
	e.call(t, "PATCH", path, `{"name": " phone ", "expiresAt": "`+exp.Format(time.RFC3339)+`", "limits": {"messages": 3, "tokens": null, "files": 2}}`, http.StatusOK).decode(t, zeroed(&tok))
	if tok.Name != "phone" || tok.ExpiresAt == nil || !tok.ExpiresAt.Equal(exp) || tok.Revision != 1 ||
		len(tok.Limits) != 2 || tok.Limits["messages"][0].Limit != 3 || tok.Limits["files"][0].Limit != 2 || len(tok.Scopes) != 1 {
		t.Fatalf("after PATCH: %+v", tok)
	}
	var again quota.Token
	e.call(t, "GET", path, "", http.StatusOK).decode(t, &again)
	if again.Name != "phone" || again.Revision != 1 || len(again.Limits) != 2 {
		t.Fatalf("GET after PATCH: %+v", again)
	}
	p, err := e.svc.Authenticate(ctx, secret)
	if err != nil || p.Token.Limits["messages"][0].Limit != 3 || p.Token.ExpiresAt == nil || !p.Token.ExpiresAt.Equal(exp) {
		t.Fatalf("authenticate after the change (the cache must not keep the old token): %+v %v", p.Token, err)
	}

	var events struct {
		Items []map[string]any `json:"items"`
	}
	e.call(t, "GET", "/events?type=token.updated&userId="+u.ID, "", http.StatusOK).decode(t, &events)
	if len(events.Items) != 1 {
		t.Fatalf("token.updated events: %v", events.Items)
	}
	data, _ := events.Items[0]["data"].(map[string]any)
	evTok, _ := data["token"].(map[string]any)
	if evTok["name"] != "phone" || evTok["id"] != tok.ID || evTok["revision"] != float64(1) || evTok["limits"] == nil || events.Items[0]["actor"] == "" {
		t.Fatalf("token.updated event: %v", events.Items[0])
	}
	for _, ev := range events.Items {
		if s := mustJSON(t, ev); strings.Contains(s, secret) || strings.Contains(s, `"hash"`) {
			t.Fatalf("event shows the secret or its hash: %s", s)
		}
	}

	// null removes the expiry; a name alone leaves the rest.
	e.call(t, "PATCH", path, `{"expiresAt": null}`, http.StatusOK).decode(t, zeroed(&tok))
	if tok.ExpiresAt != nil || tok.Name != "phone" || len(tok.Limits) != 2 || tok.Revision != 2 {
		t.Fatalf("after removing the expiry: %+v", tok)
	}
	if p, err := e.svc.Authenticate(ctx, secret); err != nil || p.Token.ExpiresAt != nil {
		t.Fatalf("authenticate after removing the expiry: %+v %v", p.Token, err)
	}

	bad := []struct{ name, body, field string }{
		{"expiry in the past", `{"expiresAt": "2001-01-01T00:00:00Z"}`, "expiresAt"},
		{"expiry at year one", `{"expiresAt": "0001-01-01T00:00:00Z"}`, "expiresAt"},
		{"expiry not a time", `{"expiresAt": "tomorrow"}`, "expiresAt"},
		{"expiry a number", `{"expiresAt": 1893456000}`, "expiresAt"},
		{"control character in the name", `{"name": "a\u0007b"}`, "name"},
		{"name not a string", `{"name": 5}`, "name"},
		{"name too long", `{"name": "` + strings.Repeat("n", quota.MaxTokenNameLength+1) + `"}`, "name"},
		{"scopes", `{"scopes": ["*"]}`, "scopes"},
		{"limits not an object", `{"limits": [1]}`, "limits"},
		{"negative limit", `{"limits": {"messages": -1}}`, "limits.messages"},
		{"unknown model group", `{"limits": {"tokens.premum": 5}}`, "limits.tokens.premum"},
		{"unknown field", `{"owner": "x"}`, "owner"},
		{"duplicate keys", `{"name": "a", "Name": "b"}`, ""},
		{"null name", `{"name": null}`, "name"},
		{"expiry past year 9999 in UTC", `{"expiresAt": "9999-12-31T23:00:00-01:00"}`, "expiresAt"},
		{"too many resources", `{"limits": {` + manyLimits(quota.MaxLimitedResources+1) + `}}`, "limits"},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			problem(t, e.do(t, req{method: "PATCH", path: path, body: b.body}), http.StatusBadRequest, b.field)
			var now quota.Token
			e.call(t, "GET", path, "", http.StatusOK).decode(t, &now)
			if now.Revision != 2 || now.Name != "phone" || len(now.Limits) != 2 || now.ExpiresAt != nil {
				t.Fatalf("a refused change changed the token: %+v", now)
			}
		})
	}
	problem(t, e.do(t, req{method: "PATCH", path: path}), http.StatusBadRequest, "")
	// Nothing to change: the token as it is, no revision, no event.
	e.call(t, "PATCH", path, `{}`, http.StatusOK).decode(t, zeroed(&tok))
	if tok.Revision != 2 {
		t.Fatalf("an empty PATCH changed the revision: %+v", tok)
	}
	e.call(t, "GET", "/events?type=token.updated&userId="+u.ID, "", http.StatusOK).decode(t, &events)
	if len(events.Items) != 2 {
		t.Fatalf("token.updated events after an empty PATCH: %d, want 2", len(events.Items))
	}

	other := e.createUser(t, `{"name": "B", "email": "b@example.com"}`)
	for _, p := range []string{
		"/users/" + other.ID + "/tokens/" + tok.ID, // another user's token
		base + "/" + quota.NewID(),                 // no such token
		"/users/" + quota.NewID() + "/tokens/" + tok.ID,
		base + "/not%20an%20id",
	} {
		problem(t, e.do(t, req{method: "GET", path: p}), http.StatusNotFound, "")
		problem(t, e.do(t, req{method: "PATCH", path: p, body: `{"name": "x"}`}), http.StatusNotFound, "")
	}

	e.call(t, "DELETE", path, "", http.StatusNoContent)
	problem(t, e.do(t, req{method: "PATCH", path: path, body: `{"name": "back"}`}), http.StatusNotFound, "")
	problem(t, e.do(t, req{method: "GET", path: path}), http.StatusNotFound, "")
	if _, err := e.svc.Authenticate(ctx, secret); err == nil {
		t.Fatal("a change after the revocation brought the token back")
	}
}

func mustJSON(tb testing.TB, v any) string {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

// zeroed empties *v before a decode into it, so that a field absent from
// the JSON is not left over from an earlier one.
func zeroed[T any](v *T) *T {
	var zero T
	*v = zero
	return v
}

// manyLimits is n limits as the members of a JSON object.
func manyLimits(n int) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = fmt.Sprintf(`"r%d": 1`, i)
	}
	return strings.Join(parts, ", ")
}
