package llmusage

import (
	"strconv"
	"strings"
)

// FromHeader parses a backend-reported usage header value, such as the
// value of X-Usage-Tokens. Two forms are accepted:
//
//	123                    total tokens, no split (Usage.TotalTokens)
//	input=10, output=20    named counts, separated by "," or ";"
//
// In the named form the keys are case-insensitive: input (or prompt,
// input_tokens, prompt_tokens), output (or completion, output_tokens,
// completion_tokens) and total (or total_tokens); unknown keys are ignored
// so backends can add their own, but at least one known key must be
// present. Values are non-negative decimal integers; spaces around keys,
// values and separators are allowed. Anything else reports false.
func FromHeader(value string) (Usage, bool) {
	value = strings.TrimSpace(value)
	if n, ok := parseCount(value); ok {
		return Usage{TotalTokens: n, Found: true}, true
	}
	var u Usage
	for part := range strings.FieldsFuncSeq(value, func(r rune) bool { return r == ',' || r == ';' }) {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		key, val, ok := strings.Cut(part, "=")
		if !ok {
			return Usage{}, false
		}
		n, ok := parseCount(strings.TrimSpace(val))
		if !ok {
			return Usage{}, false
		}
		switch strings.ToLower(strings.TrimSpace(key)) {
		case "input", "prompt", "input_tokens", "prompt_tokens":
			u.InputTokens = n
		case "output", "completion", "output_tokens", "completion_tokens":
			u.OutputTokens = n
		case "total", "total_tokens":
			u.TotalTokens = n
		default:
			continue
		}
		u.Found = true
	}
	return u, u.Found
}

// parseCount parses a non-negative decimal integer (digits only: no sign,
// no underscores).
func parseCount(s string) (int64, bool) {
	if s == "" || s[0] < '0' || s[0] > '9' {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}
