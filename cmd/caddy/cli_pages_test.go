package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestCLIListsEveryPageAndResetsAll: `caddy quota users list` follows
// the cursors past the first 1,000 users and says how many it listed;
// `caddy quota usage reset <user>` with no resource resets every counter.
func TestCLIListsEveryPageAndResetsAll(t *testing.T) {
	g := startGateway(t, "", strings.TrimPrefix(newBackend(t).URL, "http://"))
	const n = 1003
	var first userResp
	for i := range n {
		body := map[string]any{"name": "U", "email": fmt.Sprintf("u%d@example.com", i), "limits": map[string]any{"messages": 5}}
		if i == 0 {
			first = g.tenant(t, body)
			continue
		}
		wantStatus(t, call(t, "POST", g.url+"/quota/users", adminKey, body, nil), http.StatusCreated)
	}
	out := quotaCLI(t, g, false, "users", "list")
	if lines := strings.Count(out, "@example.com"); lines != n || !strings.Contains(out, fmt.Sprintf("%d users", n)) {
		t.Fatalf("users list: %d users listed, want %d; tail: %q", lines, n, out[max(len(out)-200, 0):])
	}
	var list struct{ Items []json.RawMessage }
	if err := json.Unmarshal([]byte(quotaCLI(t, g, false, "users", "list", "--json")), &list); err != nil || len(list.Items) != n {
		t.Fatalf("users list --json: %d items, %v", len(list.Items), err)
	}
	for range 2 {
		wantStatus(t, call(t, "POST", g.url+"/v1/chat", first.Token.Token, map[string]any{}, nil), http.StatusOK)
	}
	quotaCLI(t, g, false, "usage", "reset", "u0@example.com")
	if got := g.used(t, first.User.ID, "messages"); got != 0 {
		t.Fatalf("messages after reset of all: %d", got)
	}
}
