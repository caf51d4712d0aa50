package quota

import (
	"fmt"
	"net/mail"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
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

// NormalizeEmail puts an email address in Unicode normal form C, trims it
// and lower-cases it, so that one address has one spelling.
func NormalizeEmail(s string) string { return strings.ToLower(norm.NFC.String(strings.TrimSpace(s))) }

// invisible reports whether s holds a control, format or line-breaking
// character (Unicode categories Cc, Cf, Zl and Zp: NUL, CR, LF, tab, ESC,
// zero-width spaces and joiners, byte order marks, direction overrides
// and isolates such as U+202E, the line and paragraph separators), which
// no name, address or id needs and which could make two values look
// alike, reorder what a terminal shows or break a header, a log line or
// a table.
func invisible(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool { return unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp) }) >= 0
}

// checkText checks s as free text of at most maxLen characters: valid
// UTF-8, short enough, nothing invisible. It is the one rule of every
// free-text field the API takes (names of users and tokens, emails,
// external ids), which reach events, logs and the CLI's tables; it returns
// what is wrong, "" if nothing.
func checkText(s string, maxLen int) string {
	switch {
	case !utf8.ValidString(s):
		return "must be valid UTF-8"
	case utf8.RuneCountInString(s) > maxLen:
		return fmt.Sprintf("must be at most %d characters, got %d", maxLen, utf8.RuneCountInString(s))
	case invisible(s):
		return "must not contain control or invisible characters (NUL, CR, LF, tab, zero-width or bidi controls such as U+202E, ...)"
	}
	return ""
}

func validateEmail(v *validator, email string) {
	if email == "" {
		v.add("email", "is required")
		return
	}
	if msg := checkText(email, MaxEmailLength); msg != "" {
		v.add("email", "%s", msg)
		return
	}
	a, err := mail.ParseAddress(email)
	if err != nil || a.Address != email || a.Name != "" || !strings.Contains(email[strings.LastIndexByte(email, '@')+1:], ".") {
		v.add("email", "%q is not a valid address like name@example.com", email)
	}
}

// validateName checks the name of field (a user's, a token's): free text
// of at most maxLen characters, not blank when required.
func validateName(v *validator, field, name string, maxLen int, required bool) {
	if required && strings.TrimSpace(name) == "" {
		v.add(field, "is required")
		return
	}
	msg := checkText(withoutJoiners(name), maxLen)
	if n := utf8.RuneCountInString(name); n > maxLen && utf8.ValidString(name) {
		msg = fmt.Sprintf("must be at most %d characters, got %d", maxLen, n) // joiners count
	}
	if msg != "" {
		v.add(field, "%s", msg)
	}
}

// withoutJoiners is s without the joiners a name may hold: a zero-width
// joiner (U+200D) inside an emoji sequence (after an emoji, a skin tone
// or a variation selector, before an emoji: 👩‍💻) and a zero-width
// non-joiner (U+200C) between two letters of a script that writes with it
// (Arabic, Persian, the Indic scripts). Any other (between Latin letters,
// leading, trailing, doubled) is left for checkText to refuse: "ad‍min"
// would look like "admin".
func withoutJoiners(s string) string {
	if !utf8.ValidString(s) || !strings.ContainsAny(s, "\u200c\u200d") {
		return s // invalid UTF-8 stays so, for checkText to refuse
	}
	rs := []rune(s)
	out := make([]rune, 0, len(rs))
	for i, r := range rs {
		if i > 0 && i+1 < len(rs) {
			prev, next := rs[i-1], rs[i+1]
			switch {
			case r == '\u200d' && (unicode.Is(unicode.So, prev) || unicode.Is(unicode.Sk, prev) || prev == '\ufe0f') && unicode.Is(unicode.So, next):
				continue
			case r == '\u200c' && joiningScript(prev) && joiningScript(next):
				continue
			}
		}
		out = append(out, r)
	}
	return string(out)
}

// joiningScript reports whether r is a letter or mark of a script written
// with zero-width non-joiners.
func joiningScript(r rune) bool {
	if !unicode.IsLetter(r) && !unicode.IsMark(r) {
		return false
	}
	return unicode.In(r, unicode.Arabic, unicode.Syriac, unicode.Devanagari, unicode.Bengali, unicode.Gurmukhi, unicode.Gujarati,
		unicode.Oriya, unicode.Tamil, unicode.Telugu, unicode.Kannada, unicode.Malayalam, unicode.Sinhala, unicode.Inherited)
}

func validateExternalID(v *validator, ext string) {
	if msg := checkText(ext, MaxExternalIDLength); msg != "" {
		v.add("externalId", "%s", msg)
	} else if strings.TrimSpace(ext) != ext {
		v.add("externalId", "must not start or end with white space")
	}
}

func validateStatus(v *validator, s Status) {
	if s != StatusActive && s != StatusDisabled {
		v.add("status", `must be "active" or "disabled", got %q`, string(s))
	}
}

// validateUser checks every field of a complete user record.
// validateUser checks u, whose limits were old before the change (nil for
// a new user).
func validateUser(u *User, old Limits) error {
	var v validator
	validateName(&v, "name", u.Name, MaxNameLength, true)
	validateEmail(&v, u.Email)
	validateExternalID(&v, u.ExternalID)
	validateStatus(&v, u.Status)
	if u.Credits < 0 || u.Credits > MaxLimit {
		v.add("credits", "must be between 0 and %d", int64(MaxLimit))
	}
	v.addErr(u.Limits.Validate())
	checkGrowth(&v, old, u.Limits)
	if _, ok := u.Limits[ResourceCredits]; ok {
		v.add("limits.credits", "credits are not a limit: set the credits field, or top up with POST /users/{id}/credits")
	}
	return v.err()
}
