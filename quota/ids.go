package quota

import "github.com/google/uuid"

// NewID returns a new time-sortable identifier (UUIDv7): ids sort in
// creation order, which cursor pagination relies on.
func NewID() string {
	return uuid.Must(uuid.NewV7()).String()
}

// ValidID reports whether id may name a user, token or request: 1 to
// MaxIDLength letters, digits, '-' or '_'. Every store checks ids with it
// before they reach a key.
func ValidID(id string) bool { return validID(id) }

// validID filters ids before they reach a store key.
func validID(id string) bool {
	if id == "" || len(id) > MaxIDLength {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
