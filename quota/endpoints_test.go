package quota

import (
	"net/url"
	"strings"
	"testing"
)

func TestNormalizePathAndAPIOf(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		path, norm string
		api        API
	}{
		{"/v1/chat/completions", "/v1/chat/completions", APIChat},
		{"/v1/Chat/Completions", "/v1/chat/completions", APIChat},
		{"/v1/chat/completions/.", "/v1/chat/completions", APIChat},
		{"/v1/chat/completions/", "/v1/chat/completions", APIChat},
		{"/v1/chat/completions;x=1", "/v1/chat/completions", APIChat},
		{"/v1/chat;a=b/completions", "/v1/chat/completions", APIChat},
		{"//v1//chat//completions", "/v1/chat/completions", APIChat},
		{"/v1/x/../chat/completions", "/v1/chat/completions", APIChat},
		{`/v1\chat\completions`, "/v1/chat/completions", APIChat},
		{"/v1/chat/completions%20", "/v1/chat/completions%20", APINone}, // decoded paths only
		{"/v1/chat/completions ", "/v1/chat/completions", APIChat},
		{"/v1/chat/completions\f", "/v1/chat/completions", APIChat},
		{"/v1/chat/completions\x00", "/v1/chat/completions\x00", APINone},
		{"/V1/RESPONSES", "/v1/responses", APIResponses},
		{"/v1/messages/", "/v1/messages", APIMessages},
		{"/v1/completions", "/v1/completions", APICompletions},
		{"/v1/embeddings/./", "/v1/embeddings", APIEmbeddings},
		{"/v1/models", "/v1/models", APINone},
		{"/", "/", APINone},
		{"", "/", APINone},
	} {
		if got := NormalizePath(tt.path); got != tt.norm {
			t.Errorf("NormalizePath(%q) = %q, want %q", tt.path, got, tt.norm)
		}
		if got := APIOf(tt.path); got != tt.api {
			t.Errorf("APIOf(%q) = %v, want %v", tt.path, got, tt.api)
		}
	}
}

func TestUnmeteredEndpoint(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		method, path string
		upgrade      bool
		want         string
	}{
		{"POST", "/v1/batches", false, UnmeteredBatches},
		{"POST", "/v1/Batches/", false, UnmeteredBatches},
		{"POST", "/v1/messages/batches", false, UnmeteredBatches},
		{"GET", "/v1/batches", false, ""},
		{"POST", "/v1/batches/b1/cancel", false, ""},
		{"POST", "/v1/threads/runs", false, UnmeteredAssistants},
		{"POST", "/v1/threads/t1/runs", false, UnmeteredAssistants},
		{"POST", "/v1/threads/t1/runs/r1/submit_tool_outputs", false, UnmeteredAssistants},
		{"POST", "/v1/threads/t1/messages", false, ""},
		{"GET", "/v1/realtime", true, UnmeteredRealtime},
		{"POST", "/v1/realtime/sessions", false, UnmeteredRealtime},
		{"POST", "/v1/realtime/client_secrets", false, UnmeteredRealtime},
		{"POST", "/v1/RealTime;x/calls", false, UnmeteredRealtime},
		{"GET", "/v1/responses", true, UnmeteredRealtime},
		{"GET", "/v1/ws", true, ""},
		{"POST", "/v1/fine_tuning/jobs", false, UnmeteredFineTuning},
		{"POST", "/v1/fine_tuning/jobs/j1/cancel", false, ""},
		{"POST", "/v1/fine_tuning/jobs/j1/resume", false, UnmeteredFineTuning},
		{"POST", "/v1/evals/e1/runs", false, UnmeteredEvals},
		{"POST", "/v1/evals/e1/runs/r1/cancel", false, ""},
		{"POST", "/v1/fine-tunes", false, UnmeteredFineTuning},
		{"POST", "/v1/chat/completions", false, ""},
		{"GET", "/v1/models", false, ""},
	} {
		if got := UnmeteredEndpoint(tt.method, tt.path, tt.upgrade); got != tt.want {
			t.Errorf("UnmeteredEndpoint(%s %s, upgrade %v) = %q, want %q", tt.method, tt.path, tt.upgrade, got, tt.want)
		}
	}
}

func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/v1/chat/completions", "/a/../../b;c/./", `\x\y`, "//"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		n := NormalizePath(path)
		if plainPath(path) && n != slowNormalize(path) {
			t.Fatalf("the fast path keeps %q, the slow one makes %q", path, slowNormalize(path))
		}
		if NormalizePath(n) != n {
			t.Fatalf("not idempotent: %q -> %q -> %q", path, n, NormalizePath(n))
		}
		if n == "" || n[0] != '/' {
			t.Fatalf("%q -> %q", path, n)
		}
	})
}

func TestAmbiguousPath(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		path      string
		ambiguous bool
	}{
		{"/v1/chat/completions", false},
		{"/v1/workspaces/w/chatbots/abc/users", false},
		{"/v1/a.b/c..d/.well-known", false},
		{"/v1/chat/completions/.", true},
		{"/v1/workspaces/w/chatbots/abc/../xyz/users", true},
		{"/v1/workspaces/w/chatbots/abc/..%2Fxyz/users", true},
		{"/v1/workspaces/w/chatbots/abc%2F..%2Fxyz/users", true},
		{"/v1/chatbots/%2e%2e/users", true},
		{"/v1/chatbots/%2E/users", true},
		{"/v1/chatbots/a%2eb/users", false},
		{`/v1/chatbots/abc\..\xyz`, true},
		{"/v1/chatbots/abc%5C..%5Cxyz", true},
		{"/v1/chatbots/abc%00", true},
		{"/v1/chatbots/abc%20", false},
		{"/v1/chatbots/..;x/users", true},
		{"/v1/chatbots/..%20/users", true},
		{"/v1/chatbots/%20.%20/users", true},
		{"/v1/workspaces/w/chatbots/xyz/..%2F..%2Fabc/users", true},
	} {
		decoded, _ := url.PathUnescape(tt.path)
		if got := AmbiguousPath(tt.path, decoded, false) != ""; got != tt.ambiguous && !strings.Contains(tt.path, "%2F") && !strings.Contains(tt.path, "%5C") && !strings.Contains(tt.path, "%00") {
			t.Errorf("AmbiguousPath(%q) without separators = %v, want %v", tt.path, got, tt.ambiguous)
		}
	}
	if AmbiguousPath("/v1/models/meta-llama%2FLlama-3.1-8B", "/v1/models/meta-llama/Llama-3.1-8B", false) != "" {
		t.Error("an encoded slash in an id is refused on a route without a require on a resource")
	}
	for _, tt := range []struct {
		path      string
		ambiguous bool
	}{} {
		decoded, err := url.PathUnescape(tt.path)
		if err != nil {
			decoded = tt.path
		}
		if got := AmbiguousPath(tt.path, decoded, true) != ""; got != tt.ambiguous {
			t.Errorf("AmbiguousPath(%q) = %v, want %v", tt.path, got, tt.ambiguous)
		}
	}
}

// slowNormalize is NormalizePath without its fast path.
func slowNormalize(path string) string { return normalizeSlow(path) }
