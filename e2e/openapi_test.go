package e2e

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/tenantquota/caddy-tenant-quota/admin"
)

var (
	apiOnce   sync.Once
	apiRouter routers.Router
	apiErr    error
)

// checkAdminExchange validates an exchange with the real binary's admin
// API (mounted at /quota) against the OpenAPI document: the response
// always, the request when it was accepted.
func checkAdminExchange(t *testing.T, req *http.Request, body []byte, status int, header http.Header, data []byte) {
	t.Helper()
	if !strings.HasPrefix(req.URL.Path, "/quota/") {
		return
	}
	apiOnce.Do(func() {
		doc, err := openapi3.NewLoader().LoadFromData(admin.OpenAPI)
		if err != nil {
			apiErr = err
			return
		}
		apiRouter, apiErr = gorillamux.NewRouter(doc)
	})
	if apiErr != nil {
		t.Fatalf("the OpenAPI document: %v", apiErr)
	}
	r := req.Clone(context.Background())
	r.Body = io.NopCloser(bytes.NewReader(body))
	route, params, err := apiRouter.FindRoute(r)
	if err != nil {
		if status < 400 {
			t.Fatalf("%s %s answered %d but is not in the OpenAPI document: %v", r.Method, r.URL.Path, status, err)
		}
		return
	}
	in := &openapi3filter.RequestValidationInput{Request: r, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
	if status < 400 {
		if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
			t.Fatalf("%s %s: the request does not match the OpenAPI document: %v", r.Method, r.URL.Path, err)
		}
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: status, Header: header,
		Options: &openapi3filter.Options{IncludeResponseStatus: true}}
	out.SetBodyBytes(data)
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		t.Fatalf("%s %s -> %d: the response does not match the OpenAPI document: %v\n%s", r.Method, r.URL.Path, status, err, data)
	}
}
