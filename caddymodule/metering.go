package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/llmusage"
)

// Token metering defaults.
const (
	DefaultUsageHeader    = "X-Usage-Tokens"
	DefaultMaxTokens      = quota.DefaultMaxTokens
	DefaultMaxRequestBody = 4 << 20
	DefaultReservationTTL = quota.DefaultHold
	settleTimeout         = time.Second
	// maxResponseKeyBody caps how much of a JSON response is kept to read
	// a created object's key from it.
	maxResponseKeyBody = 64 << 10
	// maxDiscard is how much more of a refused, too large body is read
	// (and dropped) before the 413.
	maxDiscard = 16 << 20
)

// llmAPI says which LLM API a request calls, or APINone: by default a POST
// whose path ends in a known API's path; with `tokens <matcher>`, every
// request the matchers select.
func (h *Handler) llmAPI(r *http.Request) (quota.API, error) {
	if !*h.Tokens {
		return quota.APINone, nil
	}
	if len(h.tokenMatchers) > 0 {
		ok, err := h.tokenMatchers.AnyMatchWithError(r)
		if err != nil || !ok {
			return quota.APINone, err
		}
	} else if r.Method != http.MethodPost {
		return quota.APINone, nil
	}
	if api := quota.APIOf(r.URL.Path); api != quota.APINone {
		return api, nil
	}
	if len(h.tokenMatchers) > 0 {
		return quota.APIOther, nil
	}
	return quota.APINone, nil
}

// request is what the handler read of a request before admitting it.
type request struct {
	tokens quota.TokenRequest
	body   []byte // the body read, when it is to be forwarded from memory
	rest   io.Reader
	// pathModel is the model the path names (an Azure-style deployment).
	pathModel string
}

// nothingToRead is the request of a route that reads no body (shared, never
// changed).
var nothingToRead request

// errBodyTooLarge refuses a body too large to bound (reserve strict).
type errBodyTooLarge struct{ limit int64 }

func (e errBodyTooLarge) Error() string {
	return fmt.Sprintf("the request body is larger than %d bytes, too large for the gateway to bound its tokens; send a smaller request, or ask the operator to raise max_request_body", e.limit)
}

// errNotObject refuses an LLM request whose body is not a JSON object
// (reserve strict): no backend of the known APIs serves one, and the
// gateway could not tell it the output maximum that bounds what it costs.
var errNotObject = errors.New("the request body must be a JSON object")

// readRequest reads the body of an LLM request (whatever its
// Content-Type), or of a request whose meter keys name body fields, up to
// max_request_body.
func (h *Handler) readRequest(r *http.Request) (req *request, err error) {
	api, err := h.llmAPI(r)
	if err != nil {
		return nil, err
	}
	if api == quota.APINone && len(h.bodyFields) == 0 {
		return &nothingToRead, nil
	}
	req = &request{tokens: quota.TokenRequest{API: api}}
	if api != quota.APINone {
		// Whatever the body turns out to be (none, too large, not an
		// object), a model the path names is the request's.
		m, why := quota.PathModel(r.URL.Path)
		if why != "" {
			return nil, errInvalidPath(why)
		}
		req.pathModel = m
		defer func() {
			if err == nil && req != nil && req.pathModel != "" {
				err = pathModel(req.pathModel, &req.tokens.Body)
			}
		}()
	}
	strict := h.route.Reserve == quota.ReserveStrict && api != quota.APINone
	if r.Body == nil || r.Body == http.NoBody {
		if strict {
			return nil, errNotObject
		}
		return req, nil
	}
	buf, err := io.ReadAll(io.LimitReader(r.Body, h.MaxRequestBody+1))
	if err != nil {
		return nil, fmt.Errorf("reading the request body: %w", err)
	}
	req.body = buf
	if int64(len(buf)) > h.MaxRequestBody {
		if strict {
			// Read on a little (bounded), so that a client still sending
			// gets the 413 rather than a connection reset.
			_, _ = io.CopyN(io.Discard, r.Body, maxDiscard)
			return nil, errBodyTooLarge{h.MaxRequestBody}
		}
		// Too large to read: forwarded as it comes, reserved by its size.
		req.rest = r.Body
		req.tokens.Size = max(r.ContentLength, int64(len(buf)))
		return req, nil
	}
	req.tokens.Size = int64(len(buf))
	h.setBodyPlaceholders(r, buf)
	if api != quota.APINone {
		if req.tokens.Body, err = llmusage.ParseRequestFor(buf, api.OutputFields()); err != nil {
			return nil, err
		}
		if strict && !req.tokens.Body.Object {
			return nil, errNotObject
		}
	}
	return req, nil
}

// pathModel makes m, the model a route names in its path (an
// Azure-style deployment), the request's: such a backend serves it
// whatever the body says, so a body naming another model is refused
// rather than charged to the other's group.
func pathModel(m string, body *llmusage.Request) error {
	if body.Model != "" && !strings.EqualFold(strings.TrimSpace(body.Model), m) {
		return &llmusage.FieldError{Field: "model", Detail: fmt.Sprintf("names %q, but the path names the deployment %q, which is what the backend serves: leave model out or name the deployment", body.Model, m)}
	}
	body.Model = m
	return nil
}

// errInvalidPath is a path the gateway refuses to read one way when a
// backend could read it another.
type errInvalidPath string

func (e errInvalidPath) Error() string {
	return "This path is ambiguous: " + string(e) + "; send it without."
}

// forwardBody puts the body back for the backend, with the output maximum
// the plan set and, for a streamed chat completion, a request for usage.
func (h *Handler) forwardBody(r *http.Request, req *request, plan *quota.Plan) error {
	if req.body == nil {
		return nil
	}
	body := req.body
	if req.rest == nil && req.tokens.Body.Object {
		set := map[string]json.RawMessage{}
		if field, n, ok := plan.OutputMax(); ok {
			for _, f := range req.tokens.API.OutputFields() {
				if f != field && slices.Contains(req.tokens.Body.MaxFields, f) {
					set[f] = nil // the backend reads the maximum from field alone
				}
			}
			set[field] = json.RawMessage(strconv.FormatInt(n, 10))
		}
		if api := req.tokens.API; *h.IncludeUsage && (api == quota.APIChat || api == quota.APICompletions) {
			if opts, ok := llmusage.IncludeUsageOptions(body); ok {
				set["stream_options"] = opts
			}
		}
		if len(set) > 0 {
			var err error
			if body, err = llmusage.Rewrite(body, set); err != nil {
				return err
			}
		}
	}
	if req.rest != nil {
		r.Body = readCloser{io.MultiReader(bytes.NewReader(body), req.rest), r.Body}
		return nil
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	if int64(len(body)) != r.ContentLength {
		r.ContentLength = int64(len(body))
		r.Header.Del("Content-Length")
	}
	return nil
}

// setBodyPlaceholders sets {http.quota.body.<field>} for the top-level
// JSON fields that meter keys use (strings and numbers).
func (h *Handler) setBodyPlaceholders(r *http.Request, body []byte) {
	if len(h.bodyFields) == 0 {
		return
	}
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return
	}
	setJSONFields(repl, "http.quota.body.", h.bodyFields, body)
}

// setJSONFields sets prefix+field for the named top-level fields of a JSON
// object that are strings or numbers.
func setJSONFields(repl *caddy.Replacer, prefix string, fields []string, body []byte) {
	var doc map[string]json.RawMessage
	if json.Unmarshal(body, &doc) != nil {
		return
	}
	for _, f := range fields {
		raw := doc[f]
		var str string
		var num json.Number
		switch {
		case json.Unmarshal(raw, &str) == nil:
			repl.Set(prefix+f, str)
		case json.Unmarshal(raw, &num) == nil:
			repl.Set(prefix+f, num.String())
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
	// keepBody keeps the start of a JSON response, to read created
	// objects' keys from it.
	keepBody bool

	status      int
	obs         *llmusage.Observer
	headerUsage *llmusage.Usage
	bytesOut    int64
	kept        []byte
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
	if m.keepBody && len(m.kept) < maxResponseKeyBody {
		m.kept = append(m.kept, p[:min(n, maxResponseKeyBody-len(m.kept))]...)
	}
	return n, err
}

// ReadFrom makes sure io.Copy goes through Write.
func (m *meterWriter) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(writerOnly{m}, r)
}

type writerOnly struct{ io.Writer }

// outcome ends the observer (and its gzip reader, if any) and says what
// the response showed.
func (m *meterWriter) outcome(clientGone bool) quota.Outcome {
	o := quota.Outcome{Status: m.status, BytesOut: m.bytesOut, ClientGone: clientGone}
	if m.obs != nil {
		m.obs.Close()
		o.Reported = m.obs.Usage()
	}
	if m.headerUsage != nil {
		o.Reported = *m.headerUsage
	}
	return o
}

// settle ends the request, also when the proxy aborted the handler
// (rec is what it panicked with): what it actually used (tokens, credits,
// objects created or released) replaces its reservation, at once. A panic
// is passed on once settled. The client is gone when the proxy aborted or
// failed with the request's context done; a client that hangs up right
// after a complete response is not.
func (h *Handler) settle(t *quota.Ticket, mw *meterWriter, r *http.Request, created []int, rec any, err error) {
	gone := rec != nil || (err != nil && r.Context().Err() != nil)
	o := mw.outcome(gone)
	if rec == nil || errors.Is(asError(rec), http.ErrAbortHandler) {
		o.CreatedKeys = h.createdKeys(r, mw, created)
	}
	if u := o.Reported; u.Found && max(u.InputTokens, u.OutputTokens, u.TotalTokens) > quota.MaxLimit && h.absurdLogged.CompareAndSwap(false, true) {
		h.logger.Warn("the backend reported an absurd token usage; counted as the largest amount instead (logged once)",
			zap.Int64("input_tokens", u.InputTokens), zap.Int64("output_tokens", u.OutputTokens), zap.Int64("max", quota.MaxLimit))
	}
	// The client may be gone; the settlement must still be made.
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	uses, serr := t.End(ctx, o)
	h.app.metrics.settled(uses)
	if serr != nil {
		storeLog.write(h.logger, zapcore.WarnLevel, "settling usage; journaled for replay", zap.Error(serr))
	}
	if rec != nil {
		panic(rec)
	}
}

func asError(v any) error {
	err, _ := v.(error)
	return err
}

// createdKeys resolves the keys that the response names for the meters
// (by index) that count created objects by them.
func (h *Handler) createdKeys(r *http.Request, mw *meterWriter, created []int) []string {
	if len(created) == 0 || mw.status < 200 || mw.status >= 300 {
		return nil
	}
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return nil
	}
	for _, name := range h.responseHeaders {
		repl.Set("http.quota.response.header."+name, mw.Header().Get(name))
	}
	if len(h.responseFields) > 0 {
		setJSONFields(repl, "http.quota.response.body.", h.responseFields, mw.kept)
	}
	var keys []string
	for _, i := range created {
		keys = append(keys, repl.ReplaceAll(h.Meters[i].Key, ""))
	}
	return keys
}
