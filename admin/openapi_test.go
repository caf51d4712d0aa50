package admin

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

var (
	apiOnce   sync.Once
	apiRouter routers.Router
	apiErr    error
)

// openAPIRouter loads the admin API's OpenAPI document (relative to the
// mount, as the tests call the handler).
func openAPIRouter() (routers.Router, error) {
	apiOnce.Do(func() {
		loader := openapi3.NewLoader()
		doc, err := loader.LoadFromData(OpenAPI)
		if err != nil {
			apiErr = err
			return
		}
		if err := doc.Validate(context.Background()); err != nil {
			apiErr = err
			return
		}
		doc.Servers = openapi3.Servers{{URL: "/"}}
		apiRouter, apiErr = gorillamux.NewRouter(doc)
	})
	return apiRouter, apiErr
}

// TestOpenAPIDocument: the document is valid OpenAPI 3.1, is served
// without a key, and names every route of the handler with the permission
// the handler requires.
func TestOpenAPIDocument(t *testing.T) {
	t.Parallel()
	if _, err := openAPIRouter(); err != nil {
		t.Fatalf("the OpenAPI document: %v", err)
	}
	e := newEnv(t)
	r := e.do(t, req{method: "GET", path: "/openapi.json", key: "-"})
	if r.status != http.StatusOK || !bytes.Equal(r.body, OpenAPI) {
		t.Fatalf("GET /openapi.json: %d", r.status)
	}
	doc, _ := openapi3.NewLoader().LoadFromData(OpenAPI)
	for _, route := range Routes {
		method, path, _ := cutSpace(route.Pattern)
		item := doc.Paths.Find(path)
		if item == nil || item.GetOperation(method) == nil {
			t.Fatalf("%s is not in the OpenAPI document", route.Pattern)
		}
		if perm := item.GetOperation(method).Extensions["x-permission"]; perm != route.Permission {
			t.Fatalf("%s: x-permission %v, the handler requires %s", route.Pattern, perm, route.Permission)
		}
	}
}

// operationIDs pins each operation's operationId: client generators make
// method names of them, so a rename breaks every generated client. A new
// route gets a new line here (and in scripts/openapi.py).
var operationIDs = map[string]string{
	"POST /users":                            "createUser",
	"GET /users":                             "listUsers",
	"GET /users/{id}":                        "getUser",
	"PATCH /users/{id}":                      "updateUser",
	"DELETE /users/{id}":                     "deleteUser",
	"POST /users/{id}/tokens":                "createToken",
	"GET /users/{id}/tokens":                 "listTokens",
	"GET /users/{id}/tokens/{tokenId}":       "getToken",
	"PATCH /users/{id}/tokens/{tokenId}":     "updateToken",
	"DELETE /users/{id}/tokens/{tokenId}":    "revokeToken",
	"GET /users/{id}/tokens/{tokenId}/usage": "getTokenUsage",
	"GET /users/{id}/limits":                 "getLimits",
	"PUT /users/{id}/limits":                 "replaceLimits",
	"PATCH /users/{id}/limits":               "updateLimits",
	"GET /users/{id}/usage":                  "getUsage",
	"POST /users/{id}/usage/reset":           "resetUsage",
	"POST /users/{id}/credits":               "addCredits",
	"GET /users/{id}/roles":                  "listRoles",
	"POST /users/{id}/roles":                 "grantRole",
	"DELETE /users/{id}/roles/{role}":        "revokeRole",
	"GET /events":                            "listEvents",
	"GET /openapi.json":                      "getOpenAPI",
}

// TestOpenAPIOperationIDs: every operation of the document has the
// operationId pinned above (camelCase, unique), and every route has one.
func TestOpenAPIOperationIDs(t *testing.T) {
	t.Parallel()
	doc, err := openapi3.NewLoader().LoadFromData(OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	camel := regexp.MustCompile(`^[a-z][a-zA-Z0-9]*$`)
	seen := map[string]string{}
	for path, item := range doc.Paths.Map() {
		for method, o := range item.Operations() {
			pattern := method + " " + path
			want, ok := operationIDs[pattern]
			switch {
			case !ok:
				t.Errorf("%s: no operationId pinned in operationIDs (the document has %q)", pattern, o.OperationID)
			case o.OperationID != want:
				t.Errorf("%s: operationId %q, want %q", pattern, o.OperationID, want)
			case !camel.MatchString(o.OperationID):
				t.Errorf("%s: operationId %q is not camelCase", pattern, o.OperationID)
			}
			if other, dup := seen[o.OperationID]; dup && o.OperationID != "" {
				t.Errorf("operationId %q on both %s and %s", o.OperationID, other, pattern)
			}
			seen[o.OperationID] = pattern
		}
	}
	for _, route := range Routes {
		if _, ok := operationIDs[route.Pattern]; !ok {
			t.Errorf("route %s has no pinned operationId", route.Pattern)
		}
	}
}

func cutSpace(s string) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == ' ' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// checkOpenAPI validates one exchange of the tests against the document:
// the response always, the request when it was accepted.
func checkOpenAPI(tb testing.TB, r *http.Request, body []byte, rec *httptest.ResponseRecorder) {
	tb.Helper()
	router, err := openAPIRouter()
	if err != nil {
		tb.Fatalf("the OpenAPI document: %v", err)
	}
	r = r.Clone(context.Background())
	r.Body = io.NopCloser(bytes.NewReader(body))
	if len(body) > 0 && r.Header.Get("Content-Type") == "" {
		r.Header.Set("Content-Type", "application/json") // as the API reads it
	}
	route, params, err := router.FindRoute(r)
	if err != nil {
		if rec.Code < 400 {
			tb.Fatalf("%s %s answered %d but is not in the OpenAPI document", r.Method, r.URL.Path, rec.Code)
		}
		return // an unknown route, refused
	}
	in := &openapi3filter.RequestValidationInput{Request: r, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
	if rec.Code < 400 {
		if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
			tb.Fatalf("%s %s: the request does not match the OpenAPI document: %v", r.Method, r.URL.Path, err)
		}
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: rec.Code, Header: rec.Header(),
		Options: &openapi3filter.Options{IncludeResponseStatus: true}}
	out.SetBodyBytes(rec.Body.Bytes())
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		tb.Fatalf("%s %s -> %d: the response does not match the OpenAPI document: %v\n%s", r.Method, r.URL.Path, rec.Code, err, rec.Body.Bytes())
	}
}
