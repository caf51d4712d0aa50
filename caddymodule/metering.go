package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/llmusage"
)

// Token metering defaults.
const (
	DefaultUsageHeader      = "X-Usage-Tokens"
	DefaultMaxTokens        = 4096
	DefaultMaxRequestBody   = 4 << 20
	DefaultReservationTTL   = 10 * time.Minute
	settleTimeout           = time.Second
	disconnectBytesPerToken = llmusage.BytesPerToken
)

// llmRequest is what the handler learned from a request body before
// forwarding it.
type llmRequest struct {
	reserved quota.TokenCount
	prompt   int64
}

// inspectRequest reads a JSON request body (up to the parse cap), estimates
// the tokens to reserve, asks a streamed chat completion for its usage, and
// puts the body back for the backend. It returns nil for requests that do
// not look like LLM calls.
func (h *Handler) inspectRequest(r *http.Request) (*llmRequest, error) {
	if r.Body == nil || r.Method != http.MethodPost {
		return nil, nil
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		return nil, nil
	}
	buf, err := io.ReadAll(io.LimitReader(r.Body, h.MaxRequestBody+1))
	if err != nil {
		return nil, err
	}
	if int64(len(buf)) > h.MaxRequestBody {
		// Too large to parse: forward it untouched, reserve by size.
		r.Body = readCloser{io.MultiReader(bytes.NewReader(buf), r.Body), r.Body}
		return &llmRequest{reserved: quota.TokenCount{Input: int64(len(buf)) / llmusage.BytesPerToken, Output: h.DefaultMaxTokens}}, nil
	}
	h.setBodyPlaceholders(r, buf)
	prompt, maxOut, stream, includeUsage := llmusage.EstimatePrompt(buf)
	if stream && !includeUsage && *h.Tokens && *h.IncludeUsage && strings.HasSuffix(r.URL.Path, "/chat/completions") {
		// A stream that does not ask for usage would be free.
		if body, ok := llmusage.AddIncludeUsage(buf); ok {
			buf = body
			r.ContentLength = int64(len(buf))
			r.Header.Del("Content-Length")
		}
	}
	r.Body = io.NopCloser(bytes.NewReader(buf))
	if prompt == 0 && maxOut == 0 && !stream {
		return nil, nil
	}
	if maxOut == 0 {
		maxOut = h.DefaultMaxTokens
	}
	return &llmRequest{reserved: quota.TokenCount{Input: prompt, Output: maxOut}, prompt: prompt}, nil
}

// setBodyPlaceholders sets {http.quota.body.<field>} for the top-level
// JSON fields that meter keys use (strings and numbers).
func (h *Handler) setBodyPlaceholders(r *http.Request, body []byte) {
	if len(h.bodyFields) == 0 {
		return
	}
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	var doc map[string]json.RawMessage
	if !ok || json.Unmarshal(body, &doc) != nil {
		return
	}
	for _, f := range h.bodyFields {
		raw := doc[f]
		var str string
		var num json.Number
		switch {
		case json.Unmarshal(raw, &str) == nil:
			repl.Set("http.quota.body."+f, str)
		case json.Unmarshal(raw, &num) == nil:
			repl.Set("http.quota.body."+f, num.String())
		}
	}
}

type readCloser struct {
	io.Reader
	io.Closer
}

// meterWriter watches a response on its way to the client: it takes the
// backend's usage header off and feeds the body, unchanged and undelayed,
// to a usage observer.
type meterWriter struct {
	*caddyhttp.ResponseWriterWrapper
	usageHeader string

	status      int
	obs         *llmusage.Observer
	headerUsage *llmusage.Usage
	bytesOut    int64
}

func (m *meterWriter) WriteHeader(code int) {
	if m.status == 0 && code >= 200 {
		m.status = code
		h := m.Header()
		if v := h.Get(m.usageHeader); v != "" {
			if u, ok := llmusage.FromHeader(v); ok {
				m.headerUsage = &u
			}
		}
		h.Del(m.usageHeader)
		m.obs = llmusage.NewObserver(h.Get("Content-Type"), h.Get("Content-Encoding"), llmusage.Options{})
	}
	m.ResponseWriterWrapper.WriteHeader(code)
}

func (m *meterWriter) Write(p []byte) (int, error) {
	if m.status == 0 {
		m.WriteHeader(http.StatusOK)
	}
	n, err := m.ResponseWriterWrapper.Write(p)
	m.bytesOut += int64(n)
	m.obs.Write(p[:n])
	return n, err
}

// finish ends the observer (and its gzip reader, if any).
func (m *meterWriter) finish() {
	if m.obs != nil {
		m.obs.Close()
	}
}

// ReadFrom makes sure io.Copy goes through Write.
func (m *meterWriter) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(writerOnly{m}, r)
}

type writerOnly struct{ io.Writer }

// actual (after finish) decides what the request used: the backend's header, else the
// usage in its body, else (for a client that went away or a backend that
// said nothing) the documented estimate: the prompt estimate plus one token
// per four bytes of response body sent. A backend error without usage
// costs nothing.
func (m *meterWriter) actual(req *llmRequest, clientGone bool) quota.TokenCount {
	var u llmusage.Usage
	if m.obs != nil {
		u = m.obs.Usage()
	}
	if m.headerUsage != nil {
		u = *m.headerUsage
	}
	if u.Found {
		if u.InputTokens == 0 && u.OutputTokens == 0 {
			return quota.TokenCount{Output: u.Total()} // a bare total
		}
		return quota.TokenCount{Input: u.InputTokens, Output: u.OutputTokens}
	}
	if m.status >= 400 && !clientGone {
		return quota.TokenCount{}
	}
	est := quota.TokenCount{Input: req.prompt, Output: (m.bytesOut + disconnectBytesPerToken - 1) / disconnectBytesPerToken}
	est.Output = min(est.Output, req.reserved.Output)
	return est
}

// settle ends the request: what it actually used (tokens, credits, objects
// created or released) replaces its reservation.
func (h *Handler) settle(u *quota.User, requestID string, actual []quota.Use) {
	// The client may be gone; the settlement must still be made.
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	if err := h.app.Service().Settle(ctx, u, requestID, actual); err != nil {
		h.logger.Warn("settling token usage; journaled for replay", zap.String("user_id", u.ID), zap.Error(err))
	}
}
