package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// TestEmailsAndExternalIDs: one address has one spelling (NFC, lower
// case), invisible and control characters are refused, lengths count
// characters, and an external id can never break a header.
func TestEmailsAndExternalIDs(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// "é" precomposed and decomposed (e + U+0301) are one address.
	composed := e.createUser(t, `{"name": "R", "email": "ren\u00e9@example.com"}`)
	if composed.Email != "ren\u00e9@example.com" {
		t.Fatalf("stored email %q", composed.Email)
	}
	problem(t, e.do(t, req{method: "POST", path: "/users", body: `{"name": "R2", "email": "RENE\u0301@example.com"}`}), http.StatusConflict, "")
	var list struct{ Items []quota.User }
	e.call(t, "GET", "/users?email="+url.QueryEscape("rene\u0301@example.com"), "", http.StatusOK).decode(t, &list)
	if len(list.Items) != 1 || list.Items[0].ID != composed.ID {
		t.Fatalf("lookup by the decomposed spelling: %+v", list.Items)
	}
	for _, bad := range []string{"a\u200b@example.com", "a\u0000b@example.com", "a@exam\u202eple.com", "a\r\n@example.com"} {
		body := fmt.Sprintf(`{"name": "X", "email": %s}`, jsonString(bad))
		problem(t, e.do(t, req{method: "POST", path: "/users", body: body}), http.StatusBadRequest, "email")
	}
	// 255 characters are allowed however many bytes they take.
	long := strings.Repeat("é", 255-len("@example.com")) + "@example.com"
	e.createUser(t, fmt.Sprintf(`{"name": "L", "email": %s}`, jsonString(long)))
	problem(t, e.do(t, req{method: "POST", path: "/users", body: fmt.Sprintf(`{"name": "L", "email": %s}`, jsonString("é"+long))}), http.StatusBadRequest, "email")

	for _, bad := range []string{"a\r\nX-Injected: 1", "nul\u0000", "tab\there", "zw\u200bj"} {
		body := fmt.Sprintf(`{"name": "X", "email": "x@example.com", "externalId": %s}`, jsonString(bad))
		problem(t, e.do(t, req{method: "POST", path: "/users", body: body}), http.StatusBadRequest, "externalId")
		problem(t, e.do(t, req{method: "PATCH", path: "/users/" + composed.ID, body: fmt.Sprintf(`{"externalId": %s}`, jsonString(bad))}), http.StatusBadRequest, "externalId")
	}
}

// TestCreditBounds: credits granted at creation have the bound of
// top-ups, a top-up past it is refused without changing the balance, and
// concurrent top-ups all count.
func TestCreditBounds(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, bad := range []string{"9223372036854775807", "1125899906842625", "-1"} {
		problem(t, e.do(t, req{method: "POST", path: "/users", body: `{"name": "C", "email": "c@example.com", "credits": ` + bad + `}`}), http.StatusBadRequest, "credits")
	}
	u := e.createUser(t, fmt.Sprintf(`{"name": "C", "email": "c@example.com", "credits": %d}`, int64(quota.MaxLimit)-1))
	path := "/users/" + u.ID + "/credits"
	p := problem(t, e.do(t, req{method: "POST", path: path, body: `{"amount": 2}`}), http.StatusBadRequest, "amount")
	if !strings.Contains(p.Detail+fmt.Sprint(p.Errors), "over") {
		t.Fatalf("the refusal does not say why: %+v", p)
	}
	var got quota.User
	e.call(t, "POST", path, `{"amount": 1}`, http.StatusOK).decode(t, &got)
	if got.Credits != quota.MaxLimit {
		t.Fatalf("credits %d", got.Credits)
	}

	v := e.createUser(t, `{"name": "V", "email": "v@example.com"}`)
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r := e.do(t, req{method: "POST", path: "/users/" + v.ID + "/credits", body: `{"amount": 1}`}); r.status != http.StatusOK {
				t.Errorf("top-up: %d %s", r.status, r.body)
			}
		}()
	}
	wg.Wait()
	e.call(t, "GET", "/users/"+v.ID, "", http.StatusOK).decode(t, &got)
	if got.Credits != 50 {
		t.Fatalf("50 concurrent top-ups of 1: %d", got.Credits)
	}
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// TestLookupAndWarnings: a '+' in ?email= may come unencoded; a limit on a
// resource that is not built in is accepted with a Warning header.
func TestLookupAndWarnings(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	u := e.createUser(t, `{"name": "P", "email": "ada+test@example.com"}`)
	var list struct{ Items []quota.User }
	e.call(t, "GET", "/users?email=ada+test@example.com", "", http.StatusOK).decode(t, &list)
	if len(list.Items) != 1 || list.Items[0].ID != u.ID {
		t.Fatalf("lookup with an unencoded +: %+v", list.Items)
	}
	r := e.call(t, "PATCH", "/users/"+u.ID+"/limits", `{"mesages": 10, "messages": 5}`, http.StatusOK)
	if w := r.header.Values("Warning"); len(w) != 1 || !strings.Contains(w[0], "limits.mesages") || !strings.Contains(w[0], "did you mean messages") {
		t.Fatalf("Warning headers %q", w)
	}
}
