package quota

import (
	"net/mail"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"

	"github.com/google/uuid"
)

// Status is a user's account status.
type Status string

// Statuses.
const (
	StatusActive   Status = "active"
	StatusDisabled Status = "disabled"
)

// User is a sub-account.
type User struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	Email      string    `json:"email"`
	ExternalID string    `json:"externalId,omitempty"`
	Status     Status    `json:"status"`
	Limits     Limits    `json:"limits"`
	Credits    int64     `json:"credits"`
	CreatedAt  time.Time `json:"createdAt"`
	UpdatedAt  time.Time `json:"updatedAt"`
	// Roles are the roles granted to the user, on resources.
	Roles []RoleGrant `json:"roles,omitempty"`
	// Revision counts the changes made to the user; Store.UpdateUser
	// writes revision n+1 only over revision n.
	Revision int64 `json:"revision"`
}

// Clone returns a deep copy of u.
func (u *User) Clone() *User {
	c := *u
	c.Limits = u.Limits.Clone()
	c.Roles = append([]RoleGrant(nil), u.Roles...)
	return &c
}

// Field length caps.
const (
	MaxEmailLength      = 255
	MaxNameLength       = 200
	MaxExternalIDLength = 255
	MaxIDLength         = 64
)

// NewID returns a new time-sortable identifier (UUIDv7): ids sort in
// creation order, which cursor pagination relies on.
func NewID() string {
	return uuid.Must(uuid.NewV7()).String()
}

// NormalizeEmail puts an email address in Unicode normal form C, trims it
// and lower-cases it, so that one address has one spelling.
func NormalizeEmail(s string) string { return strings.ToLower(norm.NFC.String(strings.TrimSpace(s))) }

// invisible reports whether s holds a control or format character
// (Unicode categories Cc and Cf: NUL, CR, LF, zero-width joiners,
// direction overrides, ...), which no address or id needs and which could
// make two values look alike or break a header.
func invisible(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool { return unicode.In(r, unicode.Cc, unicode.Cf) }) >= 0
}

func validateEmail(v *validator, email string) {
	switch {
	case email == "":
		v.add("email", "is required")
	case !utf8.ValidString(email):
		v.add("email", "must be valid UTF-8")
	case utf8.RuneCountInString(email) > MaxEmailLength:
		v.add("email", "must be at most %d characters, got %d", MaxEmailLength, utf8.RuneCountInString(email))
	case invisible(email):
		v.add("email", "must not contain control or invisible characters")
	default:
		a, err := mail.ParseAddress(email)
		if err != nil || a.Address != email || a.Name != "" || !strings.Contains(email[strings.LastIndexByte(email, '@')+1:], ".") {
			v.add("email", "%q is not a valid address like name@example.com", email)
		}
	}
}

func validateName(v *validator, name string) {
	switch {
	case strings.TrimSpace(name) == "":
		v.add("name", "is required")
	case !utf8.ValidString(name):
		v.add("name", "must be valid UTF-8")
	case utf8.RuneCountInString(name) > MaxNameLength:
		v.add("name", "must be at most %d characters", MaxNameLength)
	}
}

func validateExternalID(v *validator, ext string) {
	switch {
	case !utf8.ValidString(ext):
		v.add("externalId", "must be valid UTF-8")
	case utf8.RuneCountInString(ext) > MaxExternalIDLength:
		v.add("externalId", "must be at most %d characters", MaxExternalIDLength)
	case invisible(ext):
		v.add("externalId", "must not contain control or invisible characters (CR, LF, NUL, ...)")
	case strings.TrimSpace(ext) != ext:
		v.add("externalId", "must not start or end with white space")
	}
}

func validateStatus(v *validator, s Status) {
	if s != StatusActive && s != StatusDisabled {
		v.add("status", `must be "active" or "disabled", got %q`, string(s))
	}
}

// validateUser checks every field of a complete user record.
func validateUser(u *User) error {
	var v validator
	validateName(&v, u.Name)
	validateEmail(&v, u.Email)
	validateExternalID(&v, u.ExternalID)
	validateStatus(&v, u.Status)
	if u.Credits < 0 || u.Credits > MaxLimit {
		v.add("credits", "must be between 0 and %d", int64(MaxLimit))
	}
	v.addErr(u.Limits.Validate())
	if _, ok := u.Limits[ResourceCredits]; ok {
		v.add("limits.credits", "credits are not a limit: set the credits field, or top up with POST /users/{id}/credits")
	}
	return v.err()
}
