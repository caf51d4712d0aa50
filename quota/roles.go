package quota

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Role grant events.
const (
	EventRolesGranted = "roles.granted"
	EventRolesRevoked = "roles.revoked"
)

// RoleGrant gives a user a role on a resource.
type RoleGrant struct {
	Role string `json:"role"`
	// Resource is "type/id", "type/*" or "*".
	Resource  string    `json:"resource"`
	GrantedAt time.Time `json:"grantedAt"`
}

// Roles maps a role's name to the permission patterns it grants; the
// operator defines them (role <name> <permission>...).
type Roles map[string][]string

// MaxGrants caps the role grants of one user.
const MaxGrants = 1000

// ValidateRoleName checks a role's name: 1 to 64 letters, digits, '_' or
// '-'.
func ValidateRoleName(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("a role name is 1 to 64 characters")
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("role %q: use letters, digits, '_' and '-'", name)
		}
	}
	return nil
}

// ValidateResource checks a resource: "*", "type/*" or "type/id", the
// type 1 to 64 of a-z, 0-9, '_' and '-', the id 1 to 256 bytes of UTF-8
// without '/', white space, control or invisible characters (see
// invisible: an id reaches events and the CLI's tables). With pattern false,
// wildcards are refused (a concrete resource a request names).
func ValidateResource(r string, pattern bool) error {
	if pattern && r == "*" {
		return nil
	}
	typ, id, ok := strings.Cut(r, "/")
	if !ok || typ == "" || len(typ) > 64 || id == "" || len(id) > 256 {
		return fmt.Errorf("resource %q: use type/id, type/* or *", clipString(r))
	}
	for _, c := range typ {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("resource %q: a type is a-z, 0-9, '_' and '-'", clipString(r))
		}
	}
	if id == "*" {
		if !pattern {
			return fmt.Errorf("resource %q: a request names one resource, not a wildcard", clipString(r))
		}
		return nil
	}
	if !utf8.ValidString(id) {
		return fmt.Errorf("resource %q: an id must be valid UTF-8", clipString(r))
	}
	for _, c := range id {
		if c == '/' || c == '*' || unicode.IsSpace(c) || invisible(string(c)) {
			return fmt.Errorf("resource %q: an id has no '/', '*', white space or control characters", clipString(r))
		}
	}
	return nil
}

func clipString(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// ResourceCovers reports whether a granted resource pattern covers the
// resource a request names.
func ResourceCovers(pattern, resource string) bool {
	if pattern == "*" || pattern == resource {
		return true
	}
	typ, ok := strings.CutSuffix(pattern, "/*")
	return ok && strings.HasPrefix(resource, typ+"/")
}

// Permits reports whether the roles granted to u give perm on resource
// ("" for a check that names no resource: any grant of the permission).
func (r Roles) Permits(u *User, perm, resource string) bool {
	for _, g := range u.Roles {
		if !AnyPermits(r[g.Role], perm) {
			continue
		}
		if resource == "" || ResourceCovers(g.Resource, resource) {
			return true
		}
	}
	return false
}

// Requirement is a permission a request needs (the Caddyfile's require
// <permission> [on <resource>]).
type Requirement struct {
	Permission string `json:"permission"`
	// On is the resource, a template such as chatbots/{re.cbu.1} that the
	// caller resolves per request; empty: a role granting the permission
	// on any resource.
	On string `json:"on,omitempty"`
}

// Authorize checks reqs for p: each needs the token's scope and a role of
// the user granting the permission (on the requirement's resource, which
// resolve turns from a template into a resource name; nil: as written).
// It returns "" or the reason of the refusal, as the tenant reads it.
func (r Roles) Authorize(p *Principal, reqs []Requirement, resolve func(string) string) string {
	for _, rq := range reqs {
		if !p.Token.Allows(rq.Permission) {
			return fmt.Sprintf("This token's scopes do not allow %s.", rq.Permission)
		}
		if rq.On == "" {
			if !r.Permits(p.User, rq.Permission, "") {
				return fmt.Sprintf("You do not have the permission %s.", rq.Permission)
			}
			continue
		}
		resource := rq.On
		if resolve != nil {
			resource = resolve(rq.On)
		}
		if ValidateResource(resource, false) != nil || !r.Permits(p.User, rq.Permission, resource) {
			if len(resource) > 100 {
				resource = resource[:100] + "…"
			}
			return fmt.Sprintf("You do not have the permission %s on %s.", rq.Permission, resource)
		}
	}
	return ""
}

// GrantRole gives the user role on resource; granting a grant it has is a
// no-op. roles are the defined roles (an unknown one is ErrInvalid).
func (s *Service) GrantRole(ctx context.Context, userID string, roles Roles, role, resource string) (*RoleGrant, error) {
	var v validator
	if _, ok := roles[role]; !ok {
		names := make([]string, 0, len(roles))
		for n := range roles {
			names = append(names, n)
		}
		sort.Strings(names)
		v.add("role", "unknown role %q (defined: %s)", role, strings.Join(names, ", "))
	}
	if err := ValidateResource(resource, true); err != nil {
		v.add("resource", "%s", err.Error())
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	var grant RoleGrant
	_, err := s.modifyUser(ctx, userID, func(u *User) error {
		for _, g := range u.Roles {
			if g.Role == role && g.Resource == resource {
				grant = g
				return nil
			}
		}
		if len(u.Roles) >= MaxGrants {
			return Invalid("role", "a user holds at most %d grants", MaxGrants)
		}
		grant = RoleGrant{Role: role, Resource: resource, GrantedAt: s.now()}
		u.Roles = append(u.Roles, grant)
		return nil
	})
	return &grant, err
}

// RevokeRole takes a grant back; ErrNotFound if the user does not hold it.
func (s *Service) RevokeRole(ctx context.Context, userID, role, resource string) error {
	_, err := s.modifyUser(ctx, userID, func(u *User) error {
		for i, g := range u.Roles {
			if g.Role == role && g.Resource == resource {
				u.Roles = append(u.Roles[:i:i], u.Roles[i+1:]...)
				return nil
			}
		}
		return fmt.Errorf("role %q on %q: %w", role, resource, ErrNotFound)
	})
	return err
}

// roleEvents are the roles.granted and roles.revoked events of a change.
func (s *Service) roleEvents(ctx context.Context, old, u *User) []Event {
	type key struct{ role, resource string }
	had := map[key]bool{}
	for _, g := range old.Roles {
		had[key{g.Role, g.Resource}] = true
	}
	has := map[key]bool{}
	var out []Event
	for _, g := range u.Roles {
		has[key{g.Role, g.Resource}] = true
		if !had[key{g.Role, g.Resource}] {
			out = append(out, s.newEvent(ctx, EventRolesGranted, u.ID, g))
		}
	}
	for _, g := range old.Roles {
		if !has[key{g.Role, g.Resource}] {
			out = append(out, s.newEvent(ctx, EventRolesRevoked, u.ID, g))
		}
	}
	return out
}
