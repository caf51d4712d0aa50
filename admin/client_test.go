package admin

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// TestClient: the admin client against the handler on a real store: a
// problem is a *ClientError with its detail and fields, lists are read
// to the last page, users are found by email, external id or id, and the
// event log is polled from its cursor.
func TestClient(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	srv := httptest.NewServer(e.h)
	t.Cleanup(srv.Close)
	c := &Client{URL: srv.URL + "/", Key: testKey}
	ctx := context.Background()
	for _, email := range []string{"a@example.com", "b@example.com", "c@example.com"} {
		if _, err := c.Do(ctx, "POST", "/users", map[string]any{"name": "U", "email": email, "externalId": "x-" + email[:1]}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := c.Do(ctx, "POST", "/users", map[string]any{"name": "U", "email": "not an email"})
	var ce *ClientError
	if !errors.As(err, &ce) || ce.Status != http.StatusBadRequest || len(ce.Errors) == 0 || ce.Errors[0].Field != "email" ||
		!strings.Contains(err.Error(), "\n  email: ") {
		t.Fatalf("a bad request: %#v %v", ce, err)
	}
	all, err := c.AllPages(ctx, "/users", "take=1")
	if err != nil || len(all) != 3 {
		t.Fatalf("every page of take=1: %d items, %v", len(all), err)
	}
	byEmail, err := c.UserID(ctx, "b@example.com")
	if err != nil {
		t.Fatal(err)
	}
	byExt, err := c.UserID(ctx, "x-b")
	if err != nil || byExt != byEmail {
		t.Fatalf("by external id: %q %v, want %q", byExt, err, byEmail)
	}
	if id, err := c.UserID(ctx, byEmail); err != nil || id != byEmail {
		t.Fatalf("by id: %q %v", id, err)
	}
	if _, err := c.UserID(ctx, "nobody@example.com"); err == nil {
		t.Fatal("an unknown email was found")
	}
	page, err := c.Events(ctx, url.Values{"take": {"2"}}, "")
	if err != nil || len(page.Items) != 2 || page.NextCursor == "" || page.Cursor == "" {
		t.Fatalf("the first page of events: %+v %v", page, err)
	}
	rest, err := c.Events(ctx, url.Values{"take": {"10"}}, page.Cursor)
	if err != nil || len(rest.Items) != 1 || rest.NextCursor != "" {
		t.Fatalf("the events after the first page: %+v %v", rest, err)
	}
	if later, err := c.Events(ctx, nil, rest.Cursor); err != nil || len(later.Items) != 0 || later.Cursor != rest.Cursor {
		t.Fatalf("polling at the end: %+v %v", later, err)
	}
	wrong := &Client{URL: srv.URL, Key: "wrong-key-0123456789"}
	if _, err := wrong.Do(ctx, "GET", "/users", nil); !errors.As(err, &ce) || ce.Status != http.StatusUnauthorized {
		t.Fatalf("a wrong key: %v", err)
	}
	if _, err := (&Client{URL: srv.URL}).Do(ctx, "GET", "/users", nil); err == nil || !strings.Contains(err.Error(), "no admin key") {
		t.Fatalf("no key: %v", err)
	}
	notAProblem := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadGateway) }))
	t.Cleanup(notAProblem.Close)
	if _, err := (&Client{URL: notAProblem.URL, Key: testKey}).Do(ctx, "GET", "/users", nil); err == nil || err.Error() != "GET /users: 502 Bad Gateway" {
		t.Fatalf("an answer that is no problem: %v", err)
	}
}
