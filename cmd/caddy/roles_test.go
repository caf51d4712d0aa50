package main

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
