package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/tenantquota/caddy-tenant-quota/internal/strictjson"
	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// decodeBody decodes r's body into dst, strictly: a JSON content type (or
// none), at most h.maxBody bytes, exactly one JSON object, no key twice
// in one object at any depth (compared unescaped), UTF-8 only, no unknown
// fields, every field of the right type. An empty body is an error unless
// optional, in which case dst is left alone. Every error it returns is a
// *problemError or a *quota.ValidationError.
func (h *Handler) decodeBody(w http.ResponseWriter, r *http.Request, dst any, optional bool) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			return &problemError{
				status: http.StatusUnsupportedMediaType,
				detail: fmt.Sprintf("Content-Type must be application/json, got %q", ct),
			}
		}
	}
	tooLarge := &problemError{
		status: http.StatusRequestEntityTooLarge,
		detail: fmt.Sprintf("body larger than %d bytes", h.maxBody),
	}
	if r.ContentLength > h.maxBody {
		return tooLarge
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.maxBody))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return tooLarge
		}
		return badRequest("", "reading the body failed: "+err.Error())
	}
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) == 0 {
		if optional {
			return nil
		}
		return badRequest("", "a JSON object body is required")
	}
	if trimmed[0] != '{' {
		// Report malformed JSON as such before complaining about its kind.
		var v any
		if err := json.Unmarshal(data, &v); err != nil {
			return decodeError(err, dst)
		}
		return badRequest("", "body must be a JSON object, got "+valueKind(v))
	}
	if json.Valid(data) {
		// Go keeps the last of duplicate keys, other readers (a proxy, an
		// audit tool) the first, and Go matches fields without regard to
		// case: a body that means two things is refused.
		if d := strictjson.FindDuplicateFold(data); d != nil {
			return badRequest(d.Field(), d.Error())
		}
		// encoding/json would turn bytes that are not UTF-8 into U+FFFD,
		// storing something else than was sent.
		if !utf8.Valid(data) {
			return notUTF8(data)
		}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return decodeError(err, dst)
	}
	end := dec.InputOffset()
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return badRequest("", fmt.Sprintf("body must hold exactly one JSON value; unexpected data after byte offset %d", end))
	}
	return nil
}

// notUTF8 names the field whose string in data, valid JSON, holds the
// first bytes that are not UTF-8 (or the key, when a key holds them). It
// walks the tokens once, on this error path only.
func notUTF8(data []byte) error {
	type level struct {
		object  bool
		key     string // an object's current key
		wantKey bool   // an object's next token is a key
		index   int    // an array's elements so far
	}
	var stack []level
	path := func() string {
		var b strings.Builder
		for _, l := range stack {
			switch {
			case !l.object:
				fmt.Fprintf(&b, "[%d]", l.index-1)
			case b.Len() > 0:
				b.WriteString("." + l.key)
			default:
				b.WriteString(l.key)
			}
		}
		return b.String()
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	for {
		start := dec.InputOffset()
		tok, err := dec.Token()
		if err != nil {
			return badRequest("", "the body must be UTF-8")
		}
		bad := !utf8.Valid(data[start:dec.InputOffset()])
		if d, ok := tok.(json.Delim); ok && (d == '}' || d == ']') {
			stack = stack[:len(stack)-1]
			if n := len(stack); n > 0 && stack[n-1].object {
				stack[n-1].wantKey = true
			}
			continue
		}
		var top *level
		if n := len(stack); n > 0 {
			top = &stack[n-1]
		}
		if top != nil && top.object && top.wantKey {
			top.key, top.wantKey = tok.(string), false
			if bad {
				return badRequest(path(), "the key must be valid UTF-8")
			}
			continue
		}
		if top != nil && !top.object {
			top.index++
		}
		if bad {
			return badRequest(path(), "must be valid UTF-8")
		}
		if d, ok := tok.(json.Delim); ok {
			stack = append(stack, level{object: d == '{', wantKey: d == '{'})
		} else if top != nil && top.object {
			top.wantKey = true
		}
	}
}

// underField returns err with the fields a decoding problem names put
// under parent ("tokens" becomes "limits.tokens"); other errors are
// returned as they are.
func underField(parent string, err error) error {
	pe, ok := errors.AsType[*problemError](err)
	if !ok || len(pe.fields) == 0 {
		return err
	}
	out := *pe
	out.fields = make([]quota.FieldError, len(pe.fields))
	for i, f := range pe.fields {
		if strings.HasPrefix(f.Field, "[") {
			f.Field = parent + f.Field
		} else {
			f.Field = parent + "." + f.Field
		}
		out.fields[i] = f
	}
	out.detail = validationDetail(out.fields)
	return &out
}

// decodeError explains an encoding/json error, naming the field when there
// is one.
func decodeError(err error, dst any) error {
	if ve, ok := errors.AsType[*quota.ValidationError](err); ok {
		return ve
	}
	if se, ok := errors.AsType[*json.SyntaxError](err); ok {
		return badRequest("", fmt.Sprintf("body is not valid JSON: %s (at byte offset %d)", se.Error(), se.Offset))
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return badRequest("", "body is not valid JSON: it ends before the value is complete")
	}
	if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		if te.Field == "" {
			return badRequest("", "body must be a JSON object, got "+te.Value)
		}
		return badRequest(te.Field, fmt.Sprintf("must be %s, got %s", typeKind(te.Type), te.Value))
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		if unq, uerr := strconv.Unquote(name); uerr == nil {
			name = unq
		}
		return badRequest(name, "unknown field; accepted fields: "+strings.Join(jsonFields(dst), ", "))
	}
	return badRequest("", "body could not be decoded: "+err.Error())
}

// typeKind names what JSON a Go type accepts.
func typeKind(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number (64-bit)"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return "a different JSON type"
}

// valueKind names the JSON kind of a decoded value.
func valueKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case float64:
		return "a number"
	case []any:
		return "an array"
	}
	return "an object"
}

// jsonFields lists the JSON names of the fields of the struct dst points
// to, for the error about an unknown field.
func jsonFields(dst any) []string {
	t := reflect.TypeOf(dst)
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() != reflect.Struct {
		return nil
	}
	var out []string
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out = append(out, name)
	}
	return out
}

// parseLimits decodes a limits object that arrived as raw JSON. Bad shapes,
// names and values come back as a *quota.ValidationError naming
// "limits.<resource>"; anything but an object is refused as field "limits".
func parseLimits(raw json.RawMessage) (quota.Limits, error) {
	var l quota.Limits
	if err := json.Unmarshal(raw, &l); err != nil {
		if ve, ok := errors.AsType[*quota.ValidationError](err); ok {
			return nil, ve
		}
		return nil, quota.Invalid("limits", `must be an object of resource names to limits, like {"tokens": 100000, "messages": {"limit": 60, "per": "minute"}}`)
	}
	if l == nil {
		return nil, quota.Invalid("limits", "must be an object, not null")
	}
	return l, nil
}

// limitsField reads the limits of a body (raw), as a user's and a
// token's PATCH take them: an object of resources, on defined model
// groups, with a Warning for a resource no meter counts.
func (h *Handler) limitsField(w http.ResponseWriter, raw json.RawMessage) (quota.Limits, error) {
	l, err := parseLimits(raw)
	if err == nil {
		err = h.checkGroups(l)
	}
	warnUnknownResources(w, l)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// checkGroups refuses limits on the resources of a model group that is
// not defined ("tokens.premum").
func (h *Handler) checkGroups(l quota.Limits) error {
	for name := range l {
		if _, group, ok := quota.SplitGroupResource(name); ok && !slices.Contains(h.groups, group) {
			return quota.Invalid("limits."+name, "unknown model group %q (defined: %s)", group, strings.Join(h.groups, ", "))
		}
	}
	return nil
}

// builtinResources are the resources the gateway counts with no meter.
var builtinResources = []string{
	quota.ResourceTokens, quota.ResourceInputTokens, quota.ResourceOutputTokens, quota.ResourceMessages,
	quota.ResourceConversations, quota.ResourceRecords, quota.ResourceDatasets, quota.ResourceFiles,
	quota.ResourceSkillsets, quota.ResourceIntegrations,
}

// warnUnknownResources adds a Warning header for each limit on a resource
// that is not built in: it is accepted (meters count any name), but a typo
// such as "mesages" would otherwise limit nothing, silently.
func warnUnknownResources(w http.ResponseWriter, l quota.Limits) {
	for name := range l {
		if base, _, ok := quota.SplitGroupResource(name); slices.Contains(builtinResources, name) || ok && slices.Contains(builtinResources, base) {
			continue
		}
		msg := fmt.Sprintf("limits.%s: not a built-in resource; it counts only what a meter line counts", name)
		for _, b := range builtinResources {
			if editDistance(name, b) <= 2 {
				msg += fmt.Sprintf(" (did you mean %s?)", b)
				break
			}
		}
		w.Header().Add("Warning", `299 tenant_quota "`+strings.ReplaceAll(msg, `"`, `'`)+`"`)
	}
}

// editDistance is the Levenshtein distance of two short strings.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
