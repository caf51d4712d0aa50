package e2e

import (
	"fmt"
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
	t.Parallel()
	for _, st := range allStores() {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
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
			created := g.tenant(t, map[string]any{
				"name": "D", "email": "d@example.com", "issueToken": true,
				"limits": map[string]any{"datasets": 2, "search_units": 10},
			})
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

// TestConversationMeter: conversations are counted once per conversation
// id, from a header or from a JSON body field; a new conversation over the
// cap is refused, an existing one goes on. On both stores.
func TestConversationMeter(t *testing.T) {
	t.Parallel()
	for _, st := range allStores() {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			be := newBackend(t)
			site := "@chat path /v1/chat/completions"
			meters := "meter conversations @chat key {header.X-Conversation-ID}\n\t\t\tmeter threads /v1/threads key {http.quota.body.thread_id}"
			g := startGatewayWith(t, st.opts(t), site, meters, strings.TrimPrefix(be.URL, "http://"))
			created := g.tenant(t, map[string]any{
				"name": "C", "email": "c@example.com", "issueToken": true,
				"limits": map[string]any{"conversations": 2, "threads": 1},
			})
			tok, uid := created.Token.Token, created.User.ID
			say := func(conv string, want int) {
				t.Helper()
				req := tenantRequest(g.url+"/v1/chat/completions", tok, `{"messages":[{"role":"user","content":"hi"}]}`)
				req.Header.Set("X-Conversation-ID", conv)
				resp, err := client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != want {
					t.Fatalf("message in %s: status %d, want %d", conv, resp.StatusCode, want)
				}
			}
			for i := 0; i < 3; i++ {
				say("conv-a", http.StatusOK)
			}
			say("conv-b", http.StatusOK)
			say("conv-c", http.StatusTooManyRequests)
			say("conv-a", http.StatusOK)
			if got := g.used(t, uid, "conversations"); got != 2 {
				t.Fatalf("conversations = %d, want 2", got)
			}
			if got := g.used(t, uid, "messages"); got != 5 {
				t.Fatalf("messages = %d, want 5 (the refused one is not counted)", got)
			}
			thread := func(id string, want int) {
				t.Helper()
				wantStatus(t, call(t, "POST", g.url+"/v1/threads", tok, map[string]any{"thread_id": id}, nil), want)
			}
			thread("t1", http.StatusOK)
			thread("t1", http.StatusOK)
			thread("t2", http.StatusTooManyRequests)
			if got := g.used(t, uid, "threads"); got != 1 {
				t.Fatalf("threads = %d, want 1", got)
			}
		})
	}
}

// TestCredits: requests spend prepaid credits at the configured prices
// (reserved with the token estimate, settled to the real usage); at the end
// of the balance they get 402 insufficient_credits before reaching the
// backend; a top-up lets them through again.
func TestCredits(t *testing.T) {
	t.Parallel()
	for _, st := range allStores() {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			be, hits := llmBackend(t)
			g := startGatewayWith(t, st.opts(t), "", "reserve estimate\n\t\t\tcredits messages 2\n\t\t\tcredits tokens 1 per 10", strings.TrimPrefix(be.URL, "http://"))
			created := g.tenant(t, map[string]any{
				"name": "P", "email": "p@example.com", "issueToken": true, "credits": 20,
			})
			tok, uid := created.Token.Token, created.User.ID
			// Each completion: 2 credits for the message, 30 tokens = 3 credits;
			// 6 are reserved up front (max_tokens 30 + the prompt estimate:
			// reserve estimate, so that the arithmetic stays readable).
			body := `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":30}`
			for i := 0; i < 3; i++ {
				resp := chat(t, g.url+"/v1/chat/completions", tok, body)
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				wantStatus(t, resp, http.StatusOK)
			}
			if got := g.used(t, uid, "credits"); got != 15 {
				t.Fatalf("credits spent after 3 completions = %d, want 15", got)
			}
			before := hits.Load()
			resp := chat(t, g.url+"/v1/chat/completions", tok, body)
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusPaymentRequired || !strings.Contains(string(data), `"code":"insufficient_credits"`) ||
				resp.Header.Get("x-should-retry") != "false" || hits.Load() != before {
				t.Fatalf("at the end of the balance: %d %s %v (reached the backend: %v)", resp.StatusCode, data, resp.Header, hits.Load() != before)
			}
			wantStatus(t, call(t, "POST", g.url+"/quota/users/"+uid+"/credits", adminKey, map[string]any{"amount": 10}, nil), http.StatusOK)
			resp = chat(t, g.url+"/v1/chat/completions", tok, body)
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			wantStatus(t, resp, http.StatusOK)
			var usage struct {
				Credits int64 `json:"credits"`
			}
			wantStatus(t, call(t, "GET", g.url+"/quota/users/"+uid+"/usage", adminKey, nil, &usage), http.StatusOK)
			if usage.Credits != 10 {
				t.Fatalf("balance = %d, want 10 (30 granted, 20 spent)", usage.Credits)
			}
		})
	}
}

// TestKeyedObjectMeters: objects counted by id. A create takes its key from
// the response (a JSON body field, or a header); a delete frees only a key
// that was counted, so deleting an object twice, or one that never
// existed, frees nothing, even when the backend answers 2xx. On both
// stores.
func TestKeyedObjectMeters(t *testing.T) {
	t.Parallel()
	for _, st := range allStores() {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			var n atomic.Int64
			be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				switch {
				case r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/v1/files"):
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(http.StatusCreated)
					fmt.Fprintf(w, `{"object":"file","id":"file-%d"}`, n.Add(1))
				case r.Method == http.MethodPost:
					w.Header().Set("X-Folder-Id", fmt.Sprintf("folder-%d", n.Add(1)))
					w.WriteHeader(http.StatusCreated)
				default:
					w.WriteHeader(http.StatusNoContent) // a backend that says yes to any delete
				}
			}))
			t.Cleanup(be.Close)
			site := "@newFile {\n\t\tmethod POST\n\t\tpath /v1/files\n\t}\n\t@dropFile {\n\t\tmethod DELETE\n\t\tpath /v1/files/*\n\t}\n" +
				"\t@newFolder {\n\t\tmethod POST\n\t\tpath /v1/folders\n\t}\n\t@dropFolder {\n\t\tmethod DELETE\n\t\tpath /v1/folders/*\n\t}"
			meters := "meter files @newFile +1 key {http.quota.response.body.id}\n\t\t\tmeter files @dropFile -1 key {http.request.uri.path.2}\n" +
				"\t\t\tmeter folders @newFolder +1 key {http.quota.response.header.X-Folder-Id}\n\t\t\tmeter folders @dropFolder -1 key {http.request.uri.path.2}"
			g := startGatewayWith(t, st.opts(t), site, meters, strings.TrimPrefix(be.URL, "http://"))
			created := g.tenant(t, map[string]any{"name": "F", "email": "f@example.com", "limits": map[string]any{"files": 2, "folders": 1}})
			tok, uid := created.Token.Token, created.User.ID
			do := func(method, path string, want int) {
				t.Helper()
				wantStatus(t, call(t, method, g.url+path, tok, map[string]any{}, nil), want)
			}
			want := func(resource string, n int64) {
				t.Helper()
				if got := g.used(t, uid, resource); got != n {
					t.Fatalf("%s = %d, want %d", resource, got, n)
				}
			}
			do("POST", "/v1/files", http.StatusCreated) // file-1
			do("POST", "/v1/files", http.StatusCreated) // file-2
			want("files", 2)
			do("POST", "/v1/files", http.StatusTooManyRequests)
			do("DELETE", "/v1/files/never-existed", http.StatusNoContent)
			want("files", 2)
			do("DELETE", "/v1/files/file-1", http.StatusNoContent)
			do("DELETE", "/v1/files/file-1", http.StatusNoContent)
			want("files", 1)
			do("POST", "/v1/files", http.StatusCreated) // file-3
			want("files", 2)
			do("POST", "/v1/files", http.StatusTooManyRequests)

			do("POST", "/v1/folders", http.StatusCreated) // folder-4
			want("folders", 1)
			do("POST", "/v1/folders", http.StatusTooManyRequests)
			do("DELETE", "/v1/folders/folder-1", http.StatusNoContent) // not ours
			want("folders", 1)
			do("DELETE", "/v1/folders/folder-4", http.StatusNoContent)
			want("folders", 0)
		})
	}
}
