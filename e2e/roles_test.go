package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/tenantquota/caddy-tenant-quota/internal/redistest"
)

// TestRolesAndScopes: require … on … lets a request through only with a
// role granting the permission on that resource (or a wildcard covering
// it) and a token whose scopes allow it; a refused request reaches no
// backend and is charged nothing; a revocation on one gateway is enforced
// on the other within a second. Two gateways on one Redis.
func TestRolesAndScopes(t *testing.T) {
	t.Parallel()
	be := newBackend(t)
	opts := "redis redis://" + redistest.Start(t).Addr() + "/0\n\t\trole ChatbotEditor chatbots.read chatbots.users.*\n\t\trole Viewer chatbots.read"
	handler := "require chatbots.users.list on chatbots/{http.request.uri.path.2}"
	a := startGatewayWith(t, opts, "", handler, strings.TrimPrefix(be.URL, "http://"))
	b := startGatewayWith(t, opts, "", handler, strings.TrimPrefix(be.URL, "http://"))
	c := a.tenant(t, map[string]any{"name": "R", "email": "roles@example.com"})
	uid, tok := c.User.ID, c.Token.Token
	get := func(g *gateway, token, chatbot string) int {
		t.Helper()
		resp := call(t, "GET", g.url+"/v1/chatbots/"+chatbot+"/users", token, nil, nil)
		if resp.StatusCode == http.StatusForbidden {
			var e openAIErr
			if err := decodeJSON(resp, &e); err != nil || e.Error.Code != "permission_denied" || e.Error.Type != "permission_error" {
				t.Fatalf("refusal body: %+v %v", e, err)
			}
		}
		return resp.StatusCode
	}
	grant := func(role, resource string, want int) {
		t.Helper()
		wantStatus(t, call(t, "POST", a.url+"/quota/users/"+uid+"/roles", adminKey, map[string]any{"role": role, "resource": resource}, nil), want)
	}
	before := be.hits.Load()
	if s := get(a, tok, "abc"); s != http.StatusForbidden {
		t.Fatalf("without a role: %d", s)
	}
	if be.hits.Load() != before || a.used(t, uid, "messages") != 0 {
		t.Fatal("a refused request reached the backend or was charged")
	}
	grant("Nope", "chatbots/abc", http.StatusBadRequest)
	grant("ChatbotEditor", "chatbots/abc", http.StatusCreated)
	grant("ChatbotEditor", "chatbots/abc", http.StatusCreated) // idempotent
	var grants struct {
		Items []struct{ Role, Resource string } `json:"items"`
	}
	wantStatus(t, call(t, "GET", a.url+"/quota/users/"+uid+"/roles", adminKey, nil, &grants), http.StatusOK)
	if len(grants.Items) != 1 {
		t.Fatalf("grants %+v", grants.Items)
	}
	eventually(t, "the grant on both gateways", func() bool { return get(a, tok, "abc") == 200 && get(b, tok, "abc") == 200 })
	if s := get(a, tok, "xyz"); s != http.StatusForbidden {
		t.Fatalf("another chatbot: %d", s)
	}
	grant("Viewer", "chatbots/*", http.StatusCreated)
	if s := get(a, tok, "xyz"); s != http.StatusForbidden {
		t.Fatalf("a role without the permission: %d", s)
	}
	grant("ChatbotEditor", "chatbots/*", http.StatusCreated)
	eventually(t, "the wildcard grant", func() bool { return get(b, tok, "xyz") == 200 })

	// Scopes narrow a token even where the roles allow.
	var scoped, chatScoped struct {
		Token string `json:"token"`
	}
	wantStatus(t, call(t, "POST", a.url+"/quota/users/"+uid+"/tokens", adminKey, map[string]any{"scopes": []string{"usage.read"}}, &scoped), http.StatusCreated)
	wantStatus(t, call(t, "POST", a.url+"/quota/users/"+uid+"/tokens", adminKey, map[string]any{"scopes": []string{"chatbots.users.*"}}, &chatScoped), http.StatusCreated)
	wantStatus(t, call(t, "POST", a.url+"/quota/users/"+uid+"/tokens", adminKey, map[string]any{"scopes": []string{"bad scope"}}, nil), http.StatusBadRequest)
	if s := get(a, scoped.Token, "abc"); s != http.StatusForbidden {
		t.Fatalf("a token scoped to usage.read: %d", s)
	}
	if s := get(a, chatScoped.Token, "abc"); s != http.StatusOK {
		t.Fatalf("a token scoped to chatbots.users.*: %d", s)
	}

	// A revocation on gateway A is enforced on gateway B within a second.
	wantStatus(t, call(t, "DELETE", a.url+"/quota/users/"+uid+"/roles/ChatbotEditor?resource=chatbots/*", adminKey, nil, nil), http.StatusNoContent)
	wantStatus(t, call(t, "DELETE", a.url+"/quota/users/"+uid+"/roles/ChatbotEditor?resource=chatbots/*", adminKey, nil, nil), http.StatusNotFound)
	eventually(t, "the revocation on gateway B", func() bool { return get(b, tok, "xyz") == http.StatusForbidden })
	if s := get(b, tok, "abc"); s != http.StatusOK {
		t.Fatalf("the grant on chatbots/abc went with the wildcard: %d", s)
	}
}

func decodeJSON(resp *http.Response, v any) error {
	var b strings.Builder
	if _, err := io.Copy(&b, resp.Body); err != nil {
		return err
	}
	return json.Unmarshal([]byte(b.String()), v)
}

// TestTokenLimits: one tenant's two tokens with caps of 30 and 40 and a
// user cap of 60: 200 concurrent requests split over the tokens (and, on
// Redis, over two gateways) admit exactly 60, neither token over its cap;
// a 429 from a token's cap names the token.
func TestTokenLimits(t *testing.T) {
	t.Parallel()
	for _, st := range allStores() {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			be := strings.TrimPrefix(newBackend(t).URL, "http://")
			opts := st.opts(t)
			a := startGateway(t, opts, be)
			b := a
			if st.name == "redis" {
				b = startGateway(t, opts, be)
			}
			c := a.tenant(t, map[string]any{"name": "T", "email": "toklim@example.com", "limits": map[string]any{"messages": 60}})
			uid := c.User.ID
			var toks [2]struct {
				ID    string `json:"id"`
				Token string `json:"token"`
			}
			for i, capN := range []int{30, 40} {
				wantStatus(t, call(t, "POST", a.url+"/quota/users/"+uid+"/tokens", adminKey, map[string]any{"limits": map[string]any{"messages": capN}}, &toks[i]), http.StatusCreated)
			}
			wantStatus(t, call(t, "POST", a.url+"/quota/users/"+uid+"/tokens", adminKey, map[string]any{"limits": map[string]any{"credits": 5}}, nil), http.StatusBadRequest)
			counts := burst(200, func(i int) *http.Request {
				g := a
				if i%4 >= 2 {
					g = b
				}
				return tenantRequest(g.url+"/v1/chat", toks[i%2].Token, `{}`)
			})
			if counts[http.StatusOK] != 60 || counts[http.StatusTooManyRequests] != 140 {
				t.Fatalf("answers %v: want exactly 60 admitted", counts)
			}
			var sum int64
			for i, capN := range []int64{30, 40} {
				var u struct {
					Items []struct {
						Resource string
						Used     int64
						Limit    *int64
					} `json:"items"`
				}
				wantStatus(t, call(t, "GET", a.url+"/quota/users/"+uid+"/tokens/"+toks[i].ID+"/usage", adminKey, nil, &u), http.StatusOK)
				if len(u.Items) != 1 || u.Items[0].Resource != "messages" || u.Items[0].Used > capN || *u.Items[0].Limit != capN {
					t.Fatalf("token %d usage %+v", i, u.Items)
				}
				sum += u.Items[0].Used
			}
			if sum != 60 || a.used(t, uid, "messages") != 60 {
				t.Fatalf("tokens used %d, user %d", sum, a.used(t, uid, "messages"))
			}
			// A fresh user whose first token hits its own cap first.
			d := a.tenant(t, map[string]any{"name": "U", "email": "toklim2@example.com", "limits": map[string]any{"messages": 100}})
			var small struct {
				ID    string `json:"id"`
				Token string `json:"token"`
			}
			wantStatus(t, call(t, "POST", a.url+"/quota/users/"+d.User.ID+"/tokens", adminKey, map[string]any{"limits": map[string]any{"messages": 1}}, &small), http.StatusCreated)
			wantStatus(t, call(t, "POST", a.url+"/v1/chat", small.Token, map[string]any{}, nil), http.StatusOK)
			var e struct {
				Error struct {
					Message string `json:"message"`
					TokenID string `json:"token_id"`
				} `json:"error"`
			}
			wantStatus(t, call(t, "POST", a.url+"/v1/chat", small.Token, map[string]any{}, &e), http.StatusTooManyRequests)
			if e.Error.TokenID != small.ID || !strings.Contains(e.Error.Message, "this token's messages limit") {
				t.Fatalf("the 429 of a token cap: %+v", e.Error)
			}
		})
	}
}

// TestSelfServiceUsage: a tenant reads its own usage with its own token
// (and its token's own limits); another tenant's token sees only its own;
// a scoped token needs usage.read; reading charges nothing.
func TestSelfServiceUsage(t *testing.T) {
	t.Parallel()
	site := "handle /quota-self/usage {\n\t\ttenant_quota_usage\n\t}"
	g := startGatewayWith(t, "", site, "", strings.TrimPrefix(newBackend(t).URL, "http://"))
	a := g.tenant(t, map[string]any{"name": "A", "email": "self-a@example.com", "credits": 7, "limits": map[string]any{"messages": 5}})
	b := g.tenant(t, map[string]any{"name": "B", "email": "self-b@example.com", "limits": map[string]any{"messages": 9}})
	wantStatus(t, call(t, "POST", g.url+"/v1/chat", a.Token.Token, map[string]any{}, nil), http.StatusOK)
	type usage struct {
		UserID  string `json:"userId"`
		Credits int64  `json:"credits"`
		Items   []struct {
			Resource string
			Used     int64
			Limit    *int64
		} `json:"items"`
		Token struct {
			ID    string `json:"id"`
			Items []struct {
				Resource string
				Limit    *int64
			} `json:"items"`
		} `json:"token"`
	}
	var ua, ub usage
	wantStatus(t, call(t, "GET", g.url+"/quota-self/usage", a.Token.Token, nil, &ua), http.StatusOK)
	wantStatus(t, call(t, "GET", g.url+"/quota-self/usage", b.Token.Token, nil, &ub), http.StatusOK)
	if ua.UserID != a.User.ID || ua.Credits != 7 || len(ua.Items) == 0 || ua.Items[len(ua.Items)-1].Resource != "messages" || ua.Token.ID != a.Token.ID {
		t.Fatalf("tenant A's own usage: %+v", ua)
	}
	if ub.UserID != b.User.ID || *ub.Items[0].Limit != 9 {
		t.Fatalf("tenant B sees: %+v", ub)
	}
	if g.used(t, a.User.ID, "messages") != 1 {
		t.Fatal("reading usage was charged")
	}
	var scoped, reader struct {
		Token string `json:"token"`
	}
	wantStatus(t, call(t, "POST", g.url+"/quota/users/"+a.User.ID+"/tokens", adminKey, map[string]any{"scopes": []string{"chat"}}, &scoped), http.StatusCreated)
	wantStatus(t, call(t, "POST", g.url+"/quota/users/"+a.User.ID+"/tokens", adminKey, map[string]any{"scopes": []string{"usage.read"}, "limits": map[string]any{"messages": 2}}, &reader), http.StatusCreated)
	wantStatus(t, call(t, "GET", g.url+"/quota-self/usage", scoped.Token, nil, nil), http.StatusForbidden)
	var ur usage
	wantStatus(t, call(t, "GET", g.url+"/quota-self/usage", reader.Token, nil, &ur), http.StatusOK)
	if len(ur.Token.Items) != 1 || *ur.Token.Items[0].Limit != 2 {
		t.Fatalf("the token's own limits: %+v", ur.Token)
	}
	wantStatus(t, call(t, "GET", g.url+"/quota-self/usage", "tq_garbage", nil, nil), http.StatusUnauthorized)
}

// TestRequireWithRegexpPlaceholder: the README's shape, a resource taken
// from a path_regexp capture.
func TestRequireWithRegexpPlaceholder(t *testing.T) {
	t.Parallel()
	be := strings.TrimPrefix(newBackend(t).URL, "http://")
	site := "@listUsers path_regexp cbu ^/v1/chatbots/([^/]+)/users$\n\thandle @listUsers {\n\t\ttenant_quota {\n\t\t\trequire chatbots.users.list on chatbots/{re.cbu.1}\n\t\t}\n\t\treverse_proxy " + be + "\n\t}"
	g := startGatewayWith(t, "role ChatbotViewer chatbots.read chatbots.users.list", site, "", be)
	c := g.tenant(t, map[string]any{"name": "X", "email": "regexp@example.com"})
	wantStatus(t, call(t, "POST", g.url+"/quota/users/"+c.User.ID+"/roles", adminKey, map[string]any{"role": "ChatbotViewer", "resource": "chatbots/abc"}, nil), http.StatusCreated)
	wantStatus(t, call(t, "GET", g.url+"/v1/chatbots/abc/users", c.Token.Token, nil, nil), http.StatusOK)
	wantStatus(t, call(t, "GET", g.url+"/v1/chatbots/xyz/users", c.Token.Token, nil, nil), http.StatusForbidden)
}

// TestRequireWithoutOn: require without on means what it means with
// on, on any resource: the tenant must hold a role granting the
// permission (anywhere) and its token's scopes must allow it. Before, it
// checked the scopes alone, so a tenant with no role went through with an
// unscoped token.
func TestRequireWithoutOn(t *testing.T) {
	t.Parallel()
	g := startGatewayWith(t, "role Chatter chat", "", "require chat", strings.TrimPrefix(newBackend(t).URL, "http://"))
	c := g.tenant(t, map[string]any{"name": "S", "email": "scope-only@example.com"})
	wantStatus(t, call(t, "POST", g.url+"/v1/chat/completions", c.Token.Token, map[string]any{}, nil), http.StatusForbidden)
	wantStatus(t, call(t, "POST", g.url+"/quota/users/"+c.User.ID+"/roles", adminKey, map[string]any{"role": "Chatter", "resource": "*"}, nil), http.StatusCreated)
	var usageOnly struct {
		Token string `json:"token"`
	}
	wantStatus(t, call(t, "POST", g.url+"/quota/users/"+c.User.ID+"/tokens", adminKey, map[string]any{"scopes": []string{"usage.read"}}, &usageOnly), http.StatusCreated)
	wantStatus(t, call(t, "POST", g.url+"/v1/chat/completions", usageOnly.Token, map[string]any{}, nil), http.StatusForbidden)
	wantStatus(t, call(t, "POST", g.url+"/v1/chat/completions", c.Token.Token, map[string]any{}, nil), http.StatusOK)
	if g.used(t, c.User.ID, "messages") != 1 {
		t.Fatal("the refused requests were charged")
	}
}

// TestRequireNextToCatchAll: the README's shape next to a catch-all route:
// no spelling of a guarded path (case, trailing slash, ;params, trailing
// space, dot segments, encoded slashes) reaches the backend without the
// require, and a path cannot be checked as one chatbot and served as
// another.
func TestRequireNextToCatchAll(t *testing.T) {
	t.Parallel()
	be := newBackend(t)
	addr := strings.TrimPrefix(be.URL, "http://")
	site := "@listUsers quota_path cbu ^/v1/workspaces/[^/]+/chatbots/([^/]+)/users$\n\thandle @listUsers {\n\t\ttenant_quota {\n\t\t\trequire chatbots.users.list on chatbots/{re.cbu.1}\n\t\t}\n\t\treverse_proxy " + addr + "\n\t}"
	g := startGatewayWith(t, "role ChatbotViewer chatbots.read chatbots.users.list", site, "", addr)
	c := g.tenant(t, map[string]any{"name": "X", "email": "catchall@example.com"})
	wantStatus(t, call(t, "POST", g.url+"/quota/users/"+c.User.ID+"/roles", adminKey, map[string]any{"role": "ChatbotViewer", "resource": "chatbots/xyz"}, nil), http.StatusCreated)
	get := func(path string) int {
		t.Helper()
		req, err := http.NewRequest("GET", g.url+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+c.Token.Token)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if s := get("/v1/workspaces/w/chatbots/xyz/users"); s != http.StatusOK {
		t.Fatalf("the granted chatbot: %d", s)
	}
	hits := be.hits.Load()
	for _, p := range []string{
		"/v1/workspaces/w/chatbots/abc/users",
		"/v1/workspaces/w/chatbots/abc/Users",
		"/v1/workspaces/w/chatbots/abc/users/",
		"/V1/workspaces/w/chatbots/abc/users",
		"/v1/workspaces/w/chatbots/abc/users;a",
		"/v1/workspaces/w/chatbots/abc/users%20",
		"/v1/workspaces/w/chatbots/abc/..%2Fxyz/users",
		"/v1/workspaces/w/chatbots/xyz/..%2F..%2Fabc/users",
		"/v1/workspaces/w/chatbots/abc%2F..%2Fxyz/users",
	} {
		if s := get(p); s != http.StatusForbidden && s != http.StatusBadRequest {
			t.Errorf("%s: %d, want 403 or 400", p, s)
		}
	}
	if n := be.hits.Load() - hits; n != 0 {
		t.Fatalf("%d requests for a chatbot the tenant may not use reached the backend", n)
	}
}
