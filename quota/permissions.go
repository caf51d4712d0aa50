package quota

import (
	"fmt"
	"strings"
)

// Admin API permissions: every admin route requires one.
const (
	PermUsersRead    = "users.read"
	PermUsersCreate  = "users.create"
	PermUsersUpdate  = "users.update"
	PermUsersDelete  = "users.delete"
	PermTokensRead   = "tokens.read"
	PermTokensCreate = "tokens.create"
	PermTokensUpdate = "tokens.update"
	PermTokensRevoke = "tokens.revoke"
	PermLimitsRead   = "limits.read"
	PermLimitsWrite  = "limits.write"
	PermUsageRead    = "usage.read"
	PermUsageReset   = "usage.reset"
	PermCreditsAdd   = "credits.add"
	PermRolesRead    = "roles.read"
	PermRolesGrant   = "roles.grant"
	PermRolesRevoke  = "roles.revoke"
	PermEventsRead   = "events.read"
)

// AdminPermissions lists every admin API permission.
var AdminPermissions = []string{
	PermUsersRead, PermUsersCreate, PermUsersUpdate, PermUsersDelete,
	PermTokensRead, PermTokensCreate, PermTokensUpdate, PermTokensRevoke, PermLimitsRead, PermLimitsWrite,
	PermUsageRead, PermUsageReset, PermCreditsAdd, PermRolesRead, PermRolesGrant, PermRolesRevoke,
	PermEventsRead,
}

// MaxPermissionLength caps a permission or pattern.
const MaxPermissionLength = 128

// ValidatePermission checks a permission name ("chatbots.users.list") or,
// with pattern, a pattern: a name, a name ending in ".*", or "*". Segments
// are 1 to 64 of a-z, A-Z, 0-9, '_' and '-', separated by dots.
func ValidatePermission(p string, pattern bool) error {
	if p == "" || len(p) > MaxPermissionLength {
		return fmt.Errorf("a permission is 1 to %d characters", MaxPermissionLength)
	}
	if pattern && p == "*" {
		return nil
	}
	segs := strings.Split(p, ".")
	for i, s := range segs {
		if pattern && s == "*" && i == len(segs)-1 && i > 0 {
			continue
		}
		if s == "" || len(s) > 64 {
			return fmt.Errorf("permission %q: segments between dots are 1 to 64 characters", p)
		}
		for _, c := range s {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
				return fmt.Errorf("permission %q: use letters, digits, '_' and '-' between dots (and a final .* in a pattern)", p)
			}
		}
	}
	return nil
}

// PermissionMatches reports whether pattern grants perm: the same name,
// "*", or a prefix pattern "a.b.*" for "a.b.c" (and "a.b.c.d").
func PermissionMatches(pattern, perm string) bool {
	if pattern == "*" || pattern == perm {
		return true
	}
	prefix, ok := strings.CutSuffix(pattern, ".*")
	return ok && strings.HasPrefix(perm, prefix+".")
}

// AnyPermits reports whether any pattern grants perm.
func AnyPermits(patterns []string, perm string) bool {
	for _, p := range patterns {
		if PermissionMatches(p, perm) {
			return true
		}
	}
	return false
}
