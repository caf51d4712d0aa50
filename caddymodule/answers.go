package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/llmusage"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// The tenant's answers: every refusal the tenant_quota handlers write, in
// the OpenAI error shape chatbot clients parse, and the one mapping of
// quota's errors to HTTP statuses that both handlers use.

// answerFailure answers err, a failed authentication or admission, for
// every tenant_quota handler: 401 for a token that is not (or no longer)
// valid or a user deleted meanwhile, 403 for a disabled account, 429 or 402 for a limit; any other
// error is the store's (storeFailure). m counts the outcome (nil: not
// counted).
func answerFailure(w http.ResponseWriter, r *http.Request, log *zap.Logger, m *metrics, err error) error {
	var le *quota.LimitError
	switch {
	case errors.As(err, &le):
		m.limitedBy(le.State)
		return writeLimitExceeded(w, le, time.Now())
	case errors.Is(err, quota.ErrUnauthenticated):
		m.outcome(outcomeUnauthenticated)
		return writeUnauthorized(w, tenantMessage(err))
	case errors.Is(err, quota.ErrNotFound):
		// The user was deleted an instant ago.
		m.outcome(outcomeUnauthenticated)
		return writeUnauthorized(w, "this token is no longer valid")
	case errors.Is(err, quota.ErrDisabled):
		m.outcome(outcomeForbidden)
		return writeError(w, http.StatusForbidden, "this account is disabled", "permission_error", "account_disabled")
	}
	return storeFailure(w, r, log, m, err)
}

// storeFailure answers a store call that failed: 503, or, when the client
// hung up while the gateway waited for the store (the call ends with the
// request's context), 499 with nothing forwarded, logged at debug level:
// the store did nothing wrong.
func storeFailure(w http.ResponseWriter, r *http.Request, log *zap.Logger, m *metrics, err error) error {
	if r.Context().Err() != nil {
		m.outcome(outcomeClientGone)
		log.Debug("the client went away while the quota store answered", zap.Error(err))
		w.WriteHeader(statusClientClosedRequest)
		return nil
	}
	m.outcome(outcomeStoreDown)
	storeLog.write(log, zapcore.ErrorLevel, "quota store unavailable", zap.Error(err))
	w.Header().Set("Retry-After", "1")
	return writeError(w, http.StatusServiceUnavailable, "the quota service is temporarily unavailable; try again shortly", "server_error", "quota_unavailable")
}

// tenantMessage is an authentication error as a tenant reads it: the
// reason, without the Go error chain's sentinel suffix ("token expired",
// not "token expired: unauthenticated").
func tenantMessage(err error) string {
	msg := strings.TrimSuffix(err.Error(), ": "+quota.ErrUnauthenticated.Error())
	if msg == "" {
		return "invalid API key"
	}
	return strings.ToUpper(msg[:1]) + msg[1:] + "."
}

func missingToken(headers []string) string {
	var ways []string
	for _, h := range headers {
		if strings.EqualFold(h, "Authorization") {
			ways = append(ways, "Authorization: Bearer <token>")
		} else {
			ways = append(ways, h+": <token>")
		}
	}
	return "missing API key: send " + strings.Join(ways, " or ")
}

// openAIError is the error shape chatbot clients already parse.
type openAIError struct {
	Error openAIErrorBody `json:"error"`
}

type openAIErrorBody struct {
	Message  string     `json:"message"`
	Type     string     `json:"type"`
	Code     string     `json:"code"`
	Param    *string    `json:"param"`
	Resource string     `json:"resource,omitempty"`
	Limit    *int64     `json:"limit,omitempty"`
	Used     *int64     `json:"used,omitempty"`
	Period   string     `json:"period,omitempty"`
	ResetsAt *time.Time `json:"resets_at,omitempty"`
	// TokenID is set when the limit is the calling token's own.
	TokenID string `json:"token_id,omitempty"`
}

func writeError(w http.ResponseWriter, status int, msg, typ, code string) error {
	return writeErrorBody(w, status, openAIErrorBody{Message: msg, Type: typ, Code: code})
}

func writeErrorBody(w http.ResponseWriter, status int, body openAIErrorBody) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(openAIError{Error: body})
}

func writeUnauthorized(w http.ResponseWriter, msg string) error {
	w.Header().Set("WWW-Authenticate", `Bearer realm="tenant_quota", error="invalid_token"`)
	return writeError(w, http.StatusUnauthorized, msg, "invalid_request_error", "invalid_api_key")
}

// writeUnmetered refuses an endpoint whose token spending the gateway
// cannot bound (403 endpoint_not_metered).
func writeUnmetered(w http.ResponseWriter, endpoint string) error {
	what := map[string]string{
		quota.UnmeteredBackground:  "Background responses",
		quota.UnmeteredBatches:     "Batches",
		quota.UnmeteredAssistants:  "Assistants runs",
		quota.UnmeteredRealtime:    "The Realtime API",
		quota.UnmeteredFineTuning:  "Fine-tuning jobs",
		quota.UnmeteredEvals:       "Eval runs",
		quota.UnmeteredStoredState: "Requests on input the backend holds (previous_response_id, conversation, stored prompts)",
		quota.UnmeteredServerTools: "Tools the backend runs itself (web search, file search, code interpreter, MCP)",
	}[endpoint]
	return writeError(w, http.StatusForbidden, fmt.Sprintf("%s (%s) spend tokens after the response, where this gateway cannot meter them, so they are not offered here; send the request without it, or ask the operator to allow it (allow_unmetered %s).", what, endpoint, endpoint), "permission_error", "endpoint_not_metered")
}

// writeRequestError refuses a request the gateway cannot meter as sent:
// 400 naming the offending field, or 413 for a body too large to bound.
func writeRequestError(w http.ResponseWriter, err error) error {
	var fe *llmusage.FieldError
	var tooLarge errBodyTooLarge
	switch {
	case errors.As(err, &fe):
		field := fe.Field
		return writeErrorBody(w, http.StatusBadRequest, openAIErrorBody{
			Message: fmt.Sprintf("Invalid value for '%s': %s.", fe.Field, fe.Detail),
			Type:    "invalid_request_error", Code: "invalid_value", Param: &field,
		})
	case errors.As(err, &tooLarge):
		return writeError(w, http.StatusRequestEntityTooLarge, err.Error(), "invalid_request_error", "request_too_large")
	case errors.Is(err, errNotObject):
		return writeError(w, http.StatusBadRequest, err.Error(), "invalid_request_error", "invalid_json")
	case errors.As(err, new(errInvalidPath)):
		return writeError(w, http.StatusBadRequest, err.Error(), "invalid_request_error", "invalid_path")
	}
	return writeError(w, http.StatusBadRequest, err.Error(), "invalid_request_error", "invalid_request")
}

func writeLimitExceeded(w http.ResponseWriter, le *quota.LimitError, now time.Time) error {
	st := le.State
	body := openAIErrorBody{
		Type: "rate_limit_error", Resource: st.Resource, Period: st.Limit.Per.String(),
		Limit: &st.Limit.Limit, Used: &st.Used, TokenID: st.Token,
	}
	whose := "your"
	if st.Token != "" {
		whose = "this token's" // the limit is the token's own, not its user's
	}
	// What this request asked for, when that is why it does not fit.
	asked := ""
	if le.Request != "" && le.Need > st.Remaining() {
		asked = fmt.Sprintf("This request may use up to %d %s (%s), but %d remain. ", le.Need, st.Resource, le.Request, st.Remaining())
	}
	neverFits := le.Need > st.Limit.Limit
	if st.Resource == quota.ResourceCredits {
		body.Type, body.Code, body.Period = "insufficient_quota", "insufficient_credits", ""
		body.Message = fmt.Sprintf("%sYour prepaid credits are used up (%d of %d spent, including requests in flight); this request needs more. Top up to continue.", asked, st.Used, st.Limit.Limit)
		w.Header().Set("x-should-retry", "false")
		return writeErrorBody(w, http.StatusPaymentRequired, body)
	}
	lower := ""
	if asked != "" {
		lower = le.Advice + ", or "
	}
	if st.Limit.Per == quota.Lifetime {
		body.Code = "quota_exceeded"
		body.Message = fmt.Sprintf("%sYou have used %d of %s %s limit of %d, including requests in flight. It does not reset by itself: %sask your provider to raise it.", asked, st.Used, whose, st.Resource, st.Limit.Limit, lower)
		neverFits = true
	} else {
		body.Code = "rate_limited"
		reset := st.ResetsAt.UTC()
		body.ResetsAt = &reset
		body.Message = fmt.Sprintf("%sYou have used %d of %s %s limit of %d per %s. It resets at %s.", asked, st.Used, whose, st.Resource, st.Limit.Limit, st.Limit.Per, reset.Format(time.RFC3339))
		if !neverFits {
			w.Header().Set("Retry-After", strconv.FormatInt(secondsUntil(st.ResetsAt, now), 10))
		}
	}
	if neverFits {
		// Retrying the same request cannot help.
		w.Header().Set("x-should-retry", "false")
	}
	setRateLimitHeaders(w.Header(), &st, now)
	return writeErrorBody(w, http.StatusTooManyRequests, body)
}

func secondsUntil(t, now time.Time) int64 {
	s := int64(t.Sub(now).Seconds() + 0.999)
	return max(s, 1)
}

// setRateLimitHeaders writes the IETF httpapi RateLimit-Policy and
// RateLimit fields for one limit.
func setRateLimitHeaders(h http.Header, st *quota.LimitState, now time.Time) {
	// This runs for every admitted request: the policy value is the same
	// for every response of one limit (cached), and the RateLimit value and
	// both header slices take one allocation. Resource names need no
	// escaping inside the quotes.
	window := int64(-1)
	if st.Limit.Per != quota.Lifetime {
		start, end := st.Limit.Per.Window(now)
		window = int64(end.Sub(start).Seconds())
	}
	out := new(rateLimitValues)
	b := append(out.buf[:0], '"')
	b = append(b, st.Resource...)
	b = append(b, '-')
	b = append(b, st.Limit.Per.String()...)
	b = append(b, `";r=`...)
	b = strconv.AppendInt(b, st.Remaining(), 10)
	if window >= 0 {
		b = append(b, ";t="...)
		b = strconv.AppendInt(b, secondsUntil(st.ResetsAt, now), 10)
	}
	out.vals = [2]string{policyValue(st, window), unsafe.String(unsafe.SliceData(b), len(b))} // b is never written again
	h["Ratelimit-Policy"] = out.vals[0:1:1]
	h["Ratelimit"] = out.vals[1:2:2]
}

// rateLimitValues are the RateLimit-Policy and RateLimit values of one
// response, and the bytes of the latter.
type rateLimitValues struct {
	vals [2]string
	buf  [64]byte // most values fit; a longer one moves out
}

// policyValue returns the RateLimit-Policy value of a limit (window in
// seconds, -1 for a lifetime limit) from a small cache: tenants on one plan
// share their policies, and a miss only builds the value again.
func policyValue(st *quota.LimitState, window int64) string {
	i := (uint64(st.Limit.Limit)*0x9E3779B97F4A7C15 ^ uint64(window)*0xC2B2AE3D27D4EB4F ^ uint64(len(st.Resource))) >> (64 - 8)
	slot := &policies[i]
	if pv := slot.Load(); pv != nil && pv.limit == st.Limit.Limit && pv.window == window && pv.per == st.Limit.Per && pv.resource == st.Resource {
		return pv.value
	}
	b := make([]byte, 0, len(st.Resource)+48)
	b = append(b, '"')
	b = append(b, st.Resource...)
	b = append(b, '-')
	b = append(b, st.Limit.Per.String()...)
	b = append(b, `";q=`...)
	b = strconv.AppendInt(b, st.Limit.Limit, 10)
	if window >= 0 {
		b = append(b, ";w="...)
		b = strconv.AppendInt(b, window, 10)
	}
	pv := &cachedPolicy{resource: st.Resource, per: st.Limit.Per, limit: st.Limit.Limit, window: window, value: string(b)}
	slot.Store(pv)
	return pv.value
}

type cachedPolicy struct {
	resource      string
	per           quota.Period
	limit, window int64
	value         string
}

var policies [256]atomic.Pointer[cachedPolicy]
