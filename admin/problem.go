package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// Problem is the body of every error response: an RFC 9457 problem
// details object, sent as application/problem+json.
type Problem struct {
	// Type is "about:blank": the status code says what kind of problem
	// it is.
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
	// Errors lists the offending fields of a request that failed
	// validation.
	Errors []quota.FieldError `json:"errors,omitempty"`
}

// problemError is an error the handler raises itself (authentication,
// routing, decoding) with the status it must be answered with.
type problemError struct {
	status int
	detail string
	fields []quota.FieldError
}

func (e *problemError) Error() string { return e.detail }

// badRequest returns a 400 problem about one field ("" for the body as a
// whole).
func badRequest(field, detail string) error {
	if field == "" {
		return &problemError{status: http.StatusBadRequest, detail: detail}
	}
	fields := []quota.FieldError{{Field: field, Detail: detail}}
	return &problemError{status: http.StatusBadRequest, detail: validationDetail(fields), fields: fields}
}

// writeError answers r with the problem err describes. It is the one place
// where errors become HTTP status codes.
func (h *Handler) writeError(w http.ResponseWriter, r *http.Request, err error) {
	p := Problem{Type: "about:blank"}
	var (
		pe *problemError
		ve *quota.ValidationError
	)
	switch {
	case errors.As(err, &pe):
		p.Status, p.Detail, p.Errors = pe.status, pe.detail, pe.fields
	case errors.As(err, &ve):
		p.Status, p.Errors = http.StatusBadRequest, ve.Fields
		p.Detail = validationDetail(ve.Fields)
	case errors.Is(err, quota.ErrInvalid):
		p.Status, p.Detail = http.StatusBadRequest, err.Error()
	case errors.Is(err, quota.ErrNotFound):
		p.Status, p.Detail = http.StatusNotFound, sentinelDetail(err, quota.ErrNotFound, " not found")
	case errors.Is(err, quota.ErrConflict):
		p.Status, p.Detail = http.StatusConflict, sentinelDetail(err, quota.ErrConflict, "")
	case errors.Is(err, context.DeadlineExceeded):
		h.log.Warn("admin request timed out", zap.String("method", r.Method), zap.String("route", r.Pattern), zap.Error(err))
		p.Status, p.Detail = http.StatusServiceUnavailable, "the quota store did not answer in time; try again"
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		// The client went away; nobody reads this answer.
		p.Status, p.Detail = http.StatusServiceUnavailable, "the request was canceled"
	default:
		h.log.Error("admin request failed", zap.String("method", r.Method), zap.String("route", r.Pattern), zap.Error(err))
		p.Status, p.Detail = http.StatusInternalServerError, "internal error; the server log has the details"
	}
	p.Title = http.StatusText(p.Status)
	body, mErr := marshal(p)
	if mErr != nil {
		// A Problem always marshals; keep a valid answer regardless.
		body = []byte(`{"type":"about:blank","title":"Internal Server Error","status":500}` + "\n")
		p.Status = http.StatusInternalServerError
	}
	writeBody(w, p.Status, "application/problem+json", body)
}

// validationDetail summarizes field errors in one sentence.
func validationDetail(fields []quota.FieldError) string {
	parts := make([]string, 0, len(fields))
	for _, f := range fields {
		if f.Field == "" {
			parts = append(parts, f.Detail)
		} else {
			parts = append(parts, f.Field+": "+f.Detail)
		}
	}
	if len(parts) == 0 {
		return "the request is invalid"
	}
	return "invalid input: " + strings.Join(parts, "; ")
}

// sentinelDetail turns "email already in use: conflict" into "email already
// in use" (and "user \"x\": not found" into "user \"x\" not found"): quota
// and the stores wrap sentinels as "<what>: %w".
func sentinelDetail(err, sentinel error, suffix string) string {
	msg := err.Error()
	if what, ok := strings.CutSuffix(msg, ": "+sentinel.Error()); ok && what != "" {
		return what + suffix
	}
	return msg
}

// writeJSON answers with v as application/json.
func (h *Handler) writeJSON(w http.ResponseWriter, r *http.Request, status int, v any) {
	body, err := marshal(v)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	writeBody(w, status, "application/json", body)
}

// marshal encodes v as one line of JSON without HTML escaping: these are
// API responses, never embedded in a page.
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func writeBody(w http.ResponseWriter, status int, contentType string, body []byte) {
	hdr := w.Header()
	hdr.Set("Content-Type", contentType)
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
