package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// TestObjectMeters: datasets are counted +1 on a successful create and -1
// on a successful delete; a create over the cap never reaches the backend;
// a failed create counts nothing; a fixed-amount meter charges every
// matching request. On both stores.
func TestObjectMeters(t *testing.T) {
	for _, st := range allStores() {
		t.Run(st.name, func(t *testing.T) {
			var hits atomic.Int64
			be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				io.Copy(io.Discard, r.Body)
				switch {
				case r.URL.Query().Get("fail") != "":
					w.WriteHeader(http.StatusInternalServerError)
				case r.Method == http.MethodPost:
					w.WriteHeader(http.StatusCreated)
				case r.Method == http.MethodDelete:
					w.WriteHeader(http.StatusNoContent)
				default:
					w.WriteHeader(http.StatusOK)
				}
			}))
			t.Cleanup(be.Close)
			site := "@newDataset {\n\t\tmethod POST\n\t\tpath /v1/datasets\n\t}\n\t@dropDataset {\n\t\tmethod DELETE\n\t\tpath /v1/datasets/*\n\t}"
			meters := "meter datasets @newDataset +1\n\t\t\tmeter datasets @dropDataset -1\n\t\t\tmeter search_units /v1/search 5"
			g := startGatewayWith(t, st.opts(t), site, meters, strings.TrimPrefix(be.URL, "http://"))
			var created userResp
			wantStatus(t, call(t, "POST", g.url+"/quota/users", adminKey, map[string]any{
				"name": "D", "email": "d@example.com", "issueToken": true,
				"limits": map[string]any{"datasets": 2, "search_units": 10},
			}, &created), http.StatusCreated)
			tok, uid := created.Token.Token, created.User.ID
			do := func(method, path string, want int) {
				t.Helper()
				wantStatus(t, call(t, method, g.url+path, tok, map[string]any{}, nil), want)
			}

			do("POST", "/v1/datasets", http.StatusCreated)
			do("POST", "/v1/datasets", http.StatusCreated)
			before := hits.Load()
			var e openAIErr
			resp := call(t, "POST", g.url+"/v1/datasets", tok, map[string]any{}, &e)
			wantStatus(t, resp, http.StatusTooManyRequests)
			if e.Error.Code != "quota_exceeded" || e.Error.Resource != "datasets" || hits.Load() != before {
				t.Fatalf("third dataset: %+v, reached the backend: %v", e, hits.Load() != before)
			}
			do("DELETE", "/v1/datasets/a", http.StatusNoContent)
			if got := g.used(t, uid, "datasets"); got != 1 {
				t.Fatalf("after a delete: datasets = %d, want 1", got)
			}
			do("POST", "/v1/datasets?fail=1", http.StatusInternalServerError)
			if got := g.used(t, uid, "datasets"); got != 1 {
				t.Fatalf("a failed create counted: datasets = %d, want 1", got)
			}
			do("DELETE", "/v1/datasets/b?fail=1", http.StatusInternalServerError)
			if got := g.used(t, uid, "datasets"); got != 1 {
				t.Fatalf("a failed delete released: datasets = %d, want 1", got)
			}
			do("POST", "/v1/datasets", http.StatusCreated)
			if got := g.used(t, uid, "datasets"); got != 2 {
				t.Fatalf("after a create: datasets = %d, want 2", got)
			}

			do("GET", "/v1/search", http.StatusOK)
			do("GET", "/v1/search", http.StatusOK)
			do("GET", "/v1/search", http.StatusTooManyRequests)
			if got := g.used(t, uid, "search_units"); got != 10 {
				t.Fatalf("search_units = %d, want 10", got)
			}
		})
	}
}
