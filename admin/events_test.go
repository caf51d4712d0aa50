package admin

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestEventsPolling: every page of GET /events carries a cursor, the
// last and an empty one too (nextCursor only while more events are
// there); polling after it lists only newer events; an event id is not a
// cursor, and the problem says which to pass.
func TestEventsPolling(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	type page struct {
		Items []struct {
			ID, Type, Subject string
		}
		NextCursor string
		Cursor     string
	}
	list := func(query string) page {
		t.Helper()
		var p page
		e.call(t, "GET", "/events?"+query, "", http.StatusOK).decode(t, &p)
		if p.Cursor == "" {
			t.Fatalf("GET /events?%s: no cursor", query)
		}
		if p.NextCursor != "" && p.NextCursor != p.Cursor {
			t.Fatalf("GET /events?%s: nextCursor %q, cursor %q", query, p.NextCursor, p.Cursor)
		}
		return p
	}
	empty := list("")
	if len(empty.Items) != 0 || empty.NextCursor != "" {
		t.Fatalf("an empty log: %+v", empty)
	}
	a := e.createUser(t, `{"name": "A", "email": "a@example.com"}`)
	b := e.createUser(t, `{"name": "B", "email": "b@example.com"}`)
	first := list("take=1&after=" + url.QueryEscape(empty.Cursor))
	if len(first.Items) != 1 || first.Items[0].Subject != a.ID || first.NextCursor == "" {
		t.Fatalf("page 1: %+v", first)
	}
	last := list("take=1&after=" + url.QueryEscape(first.NextCursor))
	if len(last.Items) != 1 || last.Items[0].Subject != b.ID || last.NextCursor != "" {
		t.Fatalf("the last page: %+v", last)
	}
	if again := list("after=" + url.QueryEscape(last.Cursor)); len(again.Items) != 0 {
		t.Fatalf("polling the end again lists %d events", len(again.Items))
	}
	c := e.createUser(t, `{"name": "C", "email": "c@example.com"}`)
	newer := list("after=" + url.QueryEscape(last.Cursor))
	if len(newer.Items) != 1 || newer.Items[0].Subject != c.ID {
		t.Fatalf("polling after the end: %+v, want C's user.created alone", newer)
	}
	p := problem(t, e.do(t, req{method: "GET", path: "/events?after=" + newer.Items[0].ID}), http.StatusBadRequest, "after")
	if !strings.Contains(p.Errors[0].Detail, "cursor") {
		t.Fatalf("an event id as after: %+v", p)
	}
}
