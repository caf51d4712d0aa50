package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

// TestCLIListsEveryPageAndResetsAll: `caddy quota users list` follows
// the cursors past the first 1,000 users and says how many it listed;
// `caddy quota usage reset <user>` with no resource resets every counter.
func TestCLIListsEveryPageAndResetsAll(t *testing.T) {
	t.Parallel()
	g := startGateway(t, "", strings.TrimPrefix(newBackend(t).URL, "http://"))
	const n = 1003
	first := g.tenant(t, map[string]any{"name": "U", "email": "u0@example.com", "limits": map[string]any{"messages": 5}, "issueToken": true})
	// The other users by 4 clients at once, without the OpenAPI check of
	// call (the first one had it): the test is about the listing.
	var next atomic.Int64
	next.Store(1)
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			for i := next.Add(1) - 1; i < n; i = next.Add(1) - 1 {
				body := fmt.Sprintf(`{"name":"U","email":"u%d@example.com","limits":{"messages":5}}`, i)
				req, _ := http.NewRequest("POST", g.url+"/quota/users", strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+adminKey)
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				if err == nil {
					resp.Body.Close()
					if resp.StatusCode != http.StatusCreated {
						err = fmt.Errorf("creating user %d: status %d", i, resp.StatusCode)
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
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
