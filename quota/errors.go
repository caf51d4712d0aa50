package quota

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Callers check them with errors.Is; the admin API and the
// proxy handler map them to HTTP status codes in one place each.
var (
	// ErrNotFound: no user, token or other record with that id.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a unique field (email, external id) is already taken.
	ErrConflict = errors.New("conflict")
	// ErrInvalid: the input failed validation; see *ValidationError.
	ErrInvalid = errors.New("invalid input")
	// ErrUnauthenticated: the bearer token is missing, malformed, unknown,
	// expired or revoked.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrDisabled: the token is valid but its user is disabled.
	ErrDisabled = errors.New("account disabled")
	// ErrStale: a user changed between the read and the write of a
	// read-modify-write (Store.UpdateUser); the Service retries.
	ErrStale = errors.New("changed concurrently")
	// ErrLimitExceeded: admission was refused because a charge would take a
	// counter over its limit.
	ErrLimitExceeded = errors.New("limit exceeded")
)

// FieldError names one invalid input field and why it is invalid.
type FieldError struct {
	Field  string `json:"field"`
	Detail string `json:"detail"`
}

// ValidationError lists every invalid field of one input. It matches
// ErrInvalid with errors.Is.
type ValidationError struct {
	Fields []FieldError
}

// Error implements error.
func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Fields))
	for i, f := range e.Fields {
		parts[i] = f.Field + ": " + f.Detail
	}
	return "invalid input: " + strings.Join(parts, "; ")
}

// Is reports whether target is ErrInvalid.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

// Invalid returns a *ValidationError for a single field.
func Invalid(field, format string, args ...any) error {
	return &ValidationError{Fields: []FieldError{{Field: field, Detail: fmt.Sprintf(format, args...)}}}
}

// validator collects field errors.
type validator struct{ fields []FieldError }

func (v *validator) add(field, format string, args ...any) {
	v.fields = append(v.fields, FieldError{Field: field, Detail: fmt.Sprintf(format, args...)})
}

func (v *validator) addErr(err error) {
	var ve *ValidationError
	if errors.As(err, &ve) {
		v.fields = append(v.fields, ve.Fields...)
	} else if err != nil {
		v.fields = append(v.fields, FieldError{Field: "", Detail: err.Error()})
	}
}

func (v *validator) err() error {
	if len(v.fields) == 0 {
		return nil
	}
	return &ValidationError{Fields: v.fields}
}
