package quota

import (
	"time"
)

// Event types.
const (
	EventUserCreated   = "user.created"
	EventUserUpdated   = "user.updated"
	EventUserDisabled  = "user.disabled"
	EventUserEnabled   = "user.enabled"
	EventUserDeleted   = "user.deleted"
	EventTokenCreated  = "token.created"
	EventTokenRevoked  = "token.revoked"
	EventLimitsUpdated = "limits.updated"
	EventUsageReset    = "usage.reset"
	EventCreditsAdded  = "credits.added"
)

// Event describes one change to an account, a token or a limit.
type Event struct {
	Type      string    `json:"type"`
	UserID    string    `json:"userId"`
	TokenID   string    `json:"tokenId,omitempty"`
	Resources []string  `json:"resources,omitempty"`
	At        time.Time `json:"at"`
}
