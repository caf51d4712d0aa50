package admin

import (
	"fmt"
	"slices"
	"strings"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// MaxKeyNameLength caps an admin key's name.
const MaxKeyNameLength = 64

// ValidateKey checks a named admin key's name (1 to MaxKeyNameLength
// characters without white space: it names the key in events and logs)
// and its permissions, each of which must grant one of the admin API's
// (quota.AdminPermissions): the one place these rules live, for the JSON
// config's Validate and for New.
func ValidateKey(name string, permissions []string) error {
	if name == "" || len(name) > MaxKeyNameLength || strings.ContainsAny(name, " \t\r\n") {
		return fmt.Errorf("admin key name %q: 1 to %d characters without white space", name, MaxKeyNameLength)
	}
	for _, p := range permissions {
		if err := quota.ValidatePermission(p, true); err != nil {
			return fmt.Errorf("admin key %s: %w", name, err)
		}
		if !slices.ContainsFunc(quota.AdminPermissions, func(ap string) bool { return quota.AnyPermits([]string{p}, ap) }) {
			// A typo (users.raed) would grant nothing, silently.
			return fmt.Errorf("admin key %s: %q grants no admin API permission (they are %s)", name, p, strings.Join(quota.AdminPermissions, ", "))
		}
	}
	return nil
}
