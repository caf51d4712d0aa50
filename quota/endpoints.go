package quota

import "strings"

// Endpoints that spend tokens the gateway cannot bound: their output is
// made after the response, out of the gateway's sight, or over a
// connection it does not read. Under reserve strict they are refused
// (403 endpoint_not_metered) unless the operator allows them by name.
const (
	// UnmeteredBackground is a Responses request with "background": true:
	// its output is fetched later with a GET.
	UnmeteredBackground = "background"
	// UnmeteredBatches is POST .../batches (OpenAI Batch, Anthropic
	// Message Batches): many requests run later.
	UnmeteredBatches = "batches"
	// UnmeteredAssistants is POST .../threads/runs and
	// .../threads/{id}/runs[/...] (OpenAI Assistants).
	UnmeteredAssistants = "assistants"
	// UnmeteredRealtime is any request to a .../realtime/... path
	// (the Realtime API, its sessions and client secrets) and a
	// WebSocket upgrade of an LLM API path.
	UnmeteredRealtime = "realtime"
	// UnmeteredFineTuning is POST .../fine_tuning/jobs[/{id}/...] but
	// cancel and pause (and the legacy .../fine-tunes).
	UnmeteredFineTuning = "fine_tuning"
	// UnmeteredEvals is POST .../evals/{id}/runs (OpenAI Evals).
	UnmeteredEvals = "evals"
	// UnmeteredStoredState is an LLM request whose input the backend
	// holds (previous_response_id, conversation, a stored prompt): known
	// from the body (llmusage.Request.StoredState). Concurrent requests
	// on one long conversation would each go past the cap by it.
	UnmeteredStoredState = "stored_state"
	// UnmeteredServerTools is an LLM request with tools the backend runs
	// itself (web search, file search, code interpreter, MCP): known from
	// the body (llmusage.Request.ServerTools).
	UnmeteredServerTools = "server_tools"
)

// UnmeteredEndpoints lists the names of the unmetered endpoints.
var UnmeteredEndpoints = []string{UnmeteredBackground, UnmeteredBatches, UnmeteredAssistants, UnmeteredRealtime, UnmeteredFineTuning, UnmeteredEvals, UnmeteredStoredState, UnmeteredServerTools}

// NormalizePath returns path the way a lenient backend may route it:
// lower case, '\' read as '/', each segment cut at ';' (matrix
// parameters) and trimmed of white space, empty and "." segments
// dropped, ".." resolved, no trailing slash. path is the decoded path
// (%2F is already a '/').
func NormalizePath(path string) string {
	if plainPath(path) {
		return path
	}
	return strings.ToLower(CleanPath(path))
}

// normalizeSlow is NormalizePath without its fast path.
func normalizeSlow(path string) string { return strings.ToLower(CleanPath(path)) }

// CleanPath is NormalizePath without the case folding: for matching
// without regard to case (a case-insensitive pattern) while keeping the
// segments, ids among them, as the backend receives them.
func CleanPath(path string) string {
	path = strings.ReplaceAll(path, `\`, "/")
	var out []string
	for seg := range strings.SplitSeq(path, "/") {
		seg, _, _ = strings.Cut(seg, ";")
		seg = strings.TrimSpace(seg)
		switch seg {
		case "", ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, seg)
		}
	}
	return "/" + strings.Join(out, "/")
}

// plainPath reports whether NormalizePath would leave path as it is.
func plainPath(path string) bool {
	if path == "" || path[0] != '/' || (len(path) > 1 && path[len(path)-1] == '/') {
		return false
	}
	for i := 0; i < len(path); i++ {
		switch c := path[i]; {
		case c >= 'A' && c <= 'Z', c == ';', c == '\\', c <= ' ', c >= 0x7f:
			return false
		case c == '/' && i+1 < len(path) && (path[i+1] == '/' || path[i+1] == '.'):
			return false
		}
	}
	return true
}

// llmPaths are the path endings of the LLM APIs, most specific first.
var llmPaths = []struct {
	suffix string
	api    API
}{
	{"/chat/completions", APIChat},
	{"/completions", APICompletions},
	{"/responses", APIResponses},
	{"/messages", APIMessages},
	{"/embeddings", APIEmbeddings},
}

// APIOf returns the LLM API whose path the request's path ends like, after
// NormalizePath (so /v1/Chat/Completions/ and /v1/chat/completions;x=1 are
// Chat Completions), or APINone.
func APIOf(path string) API {
	path = NormalizePath(path)
	for _, p := range llmPaths {
		if strings.HasSuffix(path, p.suffix) {
			return p.api
		}
	}
	return APINone
}

// PathModel returns the model an LLM route names in its path: Azure
// OpenAI's /openai/deployments/{deployment}/chat/completions (or
// .../extensions/chat/completions), whose backend serves the deployment
// and ignores the body's model; "" when the path names none. The path is
// the decoded path, without its query. Because the path then decides
// what is charged, it must be plain: a path of that shape only once
// cleaned (doubled slashes, ";params", dot segments, spaces, '\\'), or
// naming deployments twice, is refused (why says why), so a backend that
// reads it another way cannot serve a model other than the one charged.
func PathModel(path string) (model, why string) {
	clean := CleanPath(path)
	segs := strings.Split(strings.TrimPrefix(clean, "/"), "/")
	at := -1
	for i, s := range segs {
		if strings.EqualFold(s, "deployments") {
			if at >= 0 {
				return "", "the path names deployments twice"
			}
			at = i
		}
	}
	if at < 1 || !strings.EqualFold(segs[at-1], "openai") || at+2 >= len(segs) || APIOf(clean) == APINone {
		return "", ""
	}
	rest := strings.ToLower("/" + strings.Join(segs[at+2:], "/"))
	rest = strings.TrimPrefix(rest, "/extensions")
	known := false
	for _, p := range llmPaths {
		known = known || rest == p.suffix
	}
	switch {
	case !known:
		return "", "the path holds more than a deployment and an API"
	case clean != path:
		return "", "a deployment path must be sent plain (no doubled slashes, ';', '.' or '..' segments, spaces or backslashes)"
	}
	return segs[at+1], ""
}

// UnmeteredEndpoint returns which of the UnmeteredEndpoints a request
// calls (its method, decoded path, and whether it asks for a connection
// upgrade), or "". Background responses are known from the body only:
// see llmusage.Request.Background.
func UnmeteredEndpoint(method, path string, upgrade bool) string {
	if method != "POST" && !upgrade {
		return ""
	}
	segs := strings.Split(strings.TrimPrefix(NormalizePath(path), "/"), "/")
	last := segs[len(segs)-1]
	threads, evals := false, false
	for i, s := range segs {
		switch {
		case s == "realtime":
			return UnmeteredRealtime
		case s == "threads":
			threads = true
		case s == "evals":
			evals = true
		case s == "runs" && threads:
			return UnmeteredAssistants
		case s == "runs" && evals && last == "runs":
			return UnmeteredEvals
		case s == "fine-tunes" || (s == "fine_tuning" && i+1 < len(segs) && segs[i+1] == "jobs" && last != "cancel" && last != "pause"):
			return UnmeteredFineTuning
		}
	}
	if upgrade && APIOf(path) != APINone {
		return UnmeteredRealtime
	}
	if last == "batches" && method == "POST" {
		return UnmeteredBatches
	}
	return ""
}

// AmbiguousPath says why a request path may mean one thing to the
// gateway's matchers and another to the backend, or "": a segment that is,
// or a lenient backend reads as, "." or ".." ("..;x", "..%20", "%2e%2e"),
// in the path as sent or once decoded (matchers clean them away, a
// backend may not); and, with separators, an encoded '/', '\' or NUL
// (matchers see a separator or nothing, a backend may see a character of
// an id). escaped is the path as sent (URL.EscapedPath), decoded the
// decoded one (URL.Path). Such a request is refused: a `require … on
// chatbots/{re.x.1}` must check the chatbot the backend will serve.
// Encoded separators are legitimate in some ids (a model named
// "org%2Fname"), so only routes with such a require look for them.
func AmbiguousPath(escaped, decoded string, separators bool) string {
	if separators && strings.IndexByte(escaped, '%') >= 0 {
		lower := strings.ToLower(escaped)
		for _, enc := range []string{"%2f", "%5c", "%00"} {
			if strings.Contains(lower, enc) {
				return "the path holds an encoded '/', '\\' or NUL"
			}
		}
	}
	if dotSegment(escaped) || dotSegment(decoded) {
		return "the path holds a '.' or '..' segment"
	}
	return ""
}

// dotSegment reports whether a segment of path is, or a lenient backend
// reads as, "." or "..".
func dotSegment(path string) bool {
	if !strings.Contains(path, "/.") && !strings.Contains(path, `\`) && !strings.Contains(path, "%2") && !strings.Contains(path, "/ ") {
		return false
	}
	for seg := range strings.SplitSeq(strings.ReplaceAll(path, `\`, "/"), "/") {
		seg, _, _ = strings.Cut(seg, ";")
		seg = strings.TrimSpace(strings.ReplaceAll(strings.ReplaceAll(strings.ToLower(seg), "%2e", "."), "%20", " "))
		if seg == "." || seg == ".." {
			return true
		}
	}
	return false
}
