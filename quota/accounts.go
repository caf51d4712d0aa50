package quota

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"time"
)

// NewUser is the input of CreateUser.
type NewUser struct {
	Name       string
	Email      string
	ExternalID string
	Limits     Limits
	Credits    int64
	// Status defaults to active.
	Status Status
}

// CreateUser validates and stores a new user.
func (s *Service) CreateUser(ctx context.Context, in NewUser) (*User, error) {
	now := s.now()
	u := &User{
		ID: NewID(), Name: strings.TrimSpace(in.Name), Email: NormalizeEmail(in.Email), ExternalID: in.ExternalID,
		Status: in.Status, Limits: in.Limits.Clone(), Credits: in.Credits, CreatedAt: now, UpdatedAt: now,
	}
	if u.Status == "" {
		u.Status = StatusActive
	}
	if u.Limits == nil {
		u.Limits = Limits{}
	}
	if err := validateUser(u, nil); err != nil {
		return nil, err
	}
	ev := s.newEvent(ctx, EventUserCreated, u.ID, userData{User: u})
	if err := s.store.CreateUser(ctx, u, ev); err != nil {
		return nil, err
	}
	s.published(ev)
	return u, nil
}

// GetUser returns a user by id.
func (s *Service) GetUser(ctx context.Context, id string) (*User, error) {
	if !validID(id) {
		return nil, fmt.Errorf("user %q: %w", id, ErrNotFound)
	}
	return s.store.GetUser(ctx, id)
}

// GetUserByEmail looks a user up by email (case-insensitive).
func (s *Service) GetUserByEmail(ctx context.Context, email string) (*User, error) {
	email = NormalizeEmail(email)
	if email == "" || len(email) > 4*MaxEmailLength {
		return nil, fmt.Errorf("email %q: %w", email, ErrNotFound)
	}
	return s.store.GetUserByEmail(ctx, email)
}

// GetUserByExternalID looks a user up by external id.
func (s *Service) GetUserByExternalID(ctx context.Context, ext string) (*User, error) {
	if ext == "" || len(ext) > 4*MaxExternalIDLength {
		return nil, fmt.Errorf("external id %q: %w", ext, ErrNotFound)
	}
	return s.store.GetUserByExternalID(ctx, ext)
}

// MaxPageSize is the largest page ListUsers returns.
const MaxPageSize = 1000

// ListUsers returns a page of users in creation order after the cursor
// (an id; "" for the first page) and the cursor of the next page ("" on
// the last).
func (s *Service) ListUsers(ctx context.Context, after string, take int) ([]*User, string, error) {
	if take < 1 || take > MaxPageSize {
		return nil, "", Invalid("take", "must be between 1 and %d", MaxPageSize)
	}
	if after != "" && !validID(after) {
		return nil, "", Invalid("cursor", "is not a cursor this API returned")
	}
	users, more, err := s.store.ListUsers(ctx, after, take)
	if err != nil {
		return nil, "", err
	}
	next := ""
	if more && len(users) > 0 {
		next = users[len(users)-1].ID
	}
	return users, next, nil
}

// UserPatch is the input of UpdateUser; nil fields are left unchanged.
type UserPatch struct {
	Name       *string
	Email      *string
	ExternalID *string
	// Limits are merged: named resources are replaced, a nil entry removes
	// a resource's limits.
	Limits Limits
	Status *Status
}

// UpdateUser applies a patch.
func (s *Service) UpdateUser(ctx context.Context, id string, p UserPatch) (*User, error) {
	return s.modifyUser(ctx, id, func(u *User) error {
		if p.Name != nil {
			u.Name = strings.TrimSpace(*p.Name)
		}
		if p.Email != nil {
			u.Email = NormalizeEmail(*p.Email)
		}
		if p.ExternalID != nil {
			u.ExternalID = *p.ExternalID
		}
		if p.Limits != nil {
			u.Limits = u.Limits.Merge(p.Limits)
		}
		if p.Status != nil {
			u.Status = *p.Status
		}
		return nil
	})
}

// AddCredits tops up a user's prepaid credits by amount (1 to MaxLimit);
// a top-up that would take the granted credits over MaxLimit is refused.
// Debits are not supported: spending is what requests do.
func (s *Service) AddCredits(ctx context.Context, id string, amount int64) (*User, error) {
	if amount <= 0 || amount > MaxLimit {
		return nil, Invalid("amount", "must be between 1 and %d", int64(MaxLimit))
	}
	u, err := s.modifyUser(ctx, id, func(u *User) error {
		if u.Credits > MaxLimit-amount {
			return Invalid("amount", "would take the credits granted (%d) over %d", u.Credits, int64(MaxLimit))
		}
		u.Credits += amount
		return nil
	})
	return u, err
}

// SetLimits replaces a user's limits.
func (s *Service) SetLimits(ctx context.Context, id string, limits Limits) (*User, error) {
	return s.modifyUser(ctx, id, func(u *User) error { u.Limits = limits.Clone(); return nil })
}

// PatchLimits merges limits into a user's limits.
func (s *Service) PatchLimits(ctx context.Context, id string, patch Limits) (*User, error) {
	return s.modifyUser(ctx, id, func(u *User) error { u.Limits = u.Limits.Merge(patch); return nil })
}

// maxModifyAttempts bounds the compare-and-swap retries of one change.
const maxModifyAttempts = 64

// modifyUser applies change to the stored user as a compare-and-swap:
// the write succeeds only over the revision change saw, and is retried on
// a fresh read otherwise, so concurrent changes (on any node) are never
// lost.
func (s *Service) modifyUser(ctx context.Context, id string, change func(*User) error) (*User, error) {
	var u *User
	var events []Event
	err := retryStale("user "+strconv.Quote(id), func() (err error) {
		u, events, err = s.tryModifyUser(ctx, id, change)
		return err
	})
	if err != nil {
		if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrNotFound) {
			// A write that timed out may have landed (a disable, a lowered
			// limit): no cache keeps the user as it was.
			s.invalidate(context.WithoutCancel(ctx), userKey(id))
		}
		return nil, err
	}
	s.invalidate(ctx, userKey(u.ID))
	s.published(events...)
	return u, nil
}

// retryStale runs try, a read and a compare-and-swap of what, again on
// ErrStale (a concurrent change won), at most maxModifyAttempts times.
func retryStale(what string, try func() error) error {
	for attempt := 0; ; attempt++ {
		err := try()
		if !errors.Is(err, ErrStale) {
			return err
		}
		if attempt >= maxModifyAttempts {
			return fmt.Errorf("%s changed concurrently %d times; try again: %w", what, attempt+1, ErrConflict)
		}
		// Back off a little, with jitter, so that racing writers spread.
		time.Sleep(time.Duration(rand.Int64N(int64(time.Millisecond) << min(attempt, 4))))
	}
}

func (s *Service) tryModifyUser(ctx context.Context, id string, change func(*User) error) (u *User, events []Event, err error) {
	old, err := s.GetUser(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	u = old.Clone()
	if err := change(u); err != nil {
		return nil, nil, err
	}
	if u.Limits == nil {
		u.Limits = Limits{}
	}
	deactivated := old.Status != StatusDisabled && u.Status == StatusDisabled
	var zeroed *Event
	if deactivated {
		// A deactivated account keeps no prepaid balance; the event says
		// how much went, for a top-up to give it back.
		u.Credits = 0
		if old.Credits > 0 {
			snap, err := s.store.Usage(ctx, id)
			if err != nil {
				return nil, nil, err
			}
			spent := snap.Current(ResourceCredits, Lifetime)
			ev := s.newEvent(ctx, EventCreditsZeroed, id, struct {
				Amount  int64 `json:"amount"`
				Granted int64 `json:"granted"`
				Spent   int64 `json:"spent"`
			}{max(old.Credits-spent, 0), old.Credits, spent})
			zeroed = &ev
		}
	}
	if err := validateUser(u, old.Limits); err != nil {
		return nil, nil, err
	}
	u.UpdatedAt = s.now()
	u.Revision = old.Revision + 1
	events = s.changeEvents(ctx, old, u)
	if zeroed != nil {
		events = append(events, *zeroed)
	}
	if err := s.store.UpdateUser(ctx, u, events...); err != nil {
		return nil, nil, err
	}
	// The spending goes with the balance. A disabled user with nothing
	// granted has spent nothing since, so a change that leaves it so
	// clears it again: a deactivation whose clearing failed is finished
	// by sending it again.
	if deactivated || (u.Status == StatusDisabled && old.Credits == 0 && u.Credits == 0) {
		if err := s.store.ResetUsage(ctx, id, []string{ResourceCredits}); err != nil {
			if deactivated {
				// The user is disabled all the same: every node must know.
				s.invalidate(ctx, userKey(u.ID))
				s.published(events...)
			}
			return nil, nil, fmt.Errorf("the user is disabled, but its credits spent were not cleared (send the change again): %w", err)
		}
	}
	return u, events, nil
}

// sameExceptRoles reports whether a change touched nothing but roles.
func sameExceptRoles(old, u *User) bool {
	return old.Name == u.Name && old.Email == u.Email && old.ExternalID == u.ExternalID && old.Status == u.Status &&
		old.Credits == u.Credits && len(changedResources(old.Limits, u.Limits)) == 0
}

// userData is the data of user.* events.
type userData struct {
	User *User `json:"user"`
}

// changeEvents are the events of a change from old to u.
func (s *Service) changeEvents(ctx context.Context, old, u *User) []Event {
	if grants := s.roleEvents(ctx, old, u); len(grants) > 0 && sameExceptRoles(old, u) {
		return grants // a grant or a revocation is its own event
	}
	events := []Event{s.newEvent(ctx, EventUserUpdated, u.ID, userData{User: u})}
	events = append(events, s.roleEvents(ctx, old, u)...)
	if old.Status != u.Status {
		typ := EventUserEnabled
		if u.Status == StatusDisabled {
			typ = EventUserDisabled
		}
		events = append(events, s.newEvent(ctx, typ, u.ID, userData{User: u}))
	}
	if changed := changedResources(old.Limits, u.Limits); len(changed) > 0 {
		events = append(events, s.newEvent(ctx, EventLimitsUpdated, u.ID, struct {
			Resources []string `json:"resources"`
			Old       Limits   `json:"old"`
			New       Limits   `json:"new"`
		}{changed, old.Limits, u.Limits}))
	}
	if u.Credits > old.Credits {
		events = append(events, s.newEvent(ctx, EventCreditsAdded, u.ID, struct {
			Amount  int64 `json:"amount"`
			Credits int64 `json:"credits"`
		}{u.Credits - old.Credits, u.Credits}))
	}
	return events
}

func changedResources(a, b Limits) []string {
	var out []string
	seen := map[string]bool{}
	for _, m := range []Limits{a, b} {
		for name := range m {
			if seen[name] {
				continue
			}
			seen[name] = true
			if fmt.Sprint(a[name]) != fmt.Sprint(b[name]) {
				out = append(out, name)
			}
		}
	}
	sort.Strings(out)
	return out
}

// DeleteUser deletes a user, its tokens and its counters.
func (s *Service) DeleteUser(ctx context.Context, id string) error {
	if !validID(id) {
		return fmt.Errorf("user %q: %w", id, ErrNotFound)
	}
	u, err := s.store.GetUser(ctx, id)
	if err != nil {
		return err
	}
	tokens, err := s.store.ListTokens(ctx, id)
	if err != nil {
		return err
	}
	s.returnSlices(ctx, id)
	ev := s.newEvent(ctx, EventUserDeleted, id, userData{User: u})
	if err := s.store.DeleteUser(ctx, id, ev); err != nil {
		return err
	}
	keys := []string{userKey(id)}
	for _, t := range tokens {
		keys = append(keys, hashKey(t.Hash))
	}
	s.invalidate(ctx, keys...)
	s.published(ev)
	return nil
}

// tokenData is the data of token.* events: never the secret or its hash.
type tokenData struct {
	Token Token `json:"token"`
}

// NewToken is the input of CreateToken.
type NewToken struct {
	Name      string
	ExpiresAt *time.Time
	// Scopes are permission patterns; none: all of the user's.
	Scopes []string
	// Limits are the token's own limits (none: only its user's).
	Limits Limits
}

// IssuedToken is a freshly created token with its secret, which is never
// shown again.
type IssuedToken struct {
	Token
	Secret string `json:"token"`
}

// MaxTokenNameLength caps token names.
const MaxTokenNameLength = 200

// tokenFields are what a token is made or changed with: one set of rules
// for CreateToken and UpdateToken. A nil name or expiry is not checked (a
// change leaves it as it is).
type tokenFields struct {
	name      *string
	expiresAt *time.Time
	scopes    []string
	limits    Limits
	oldLimits Limits // before the change (nil for a new token)
}

// validate checks f at now: a name of at most MaxTokenNameLength, an
// expiry in the future, valid scopes and limits of the token's own.
func (f tokenFields) validate(now time.Time) error {
	var v validator
	if f.name != nil {
		validateName(&v, "name", *f.name, MaxTokenNameLength, false)
	}
	if f.expiresAt != nil && !f.expiresAt.After(now) {
		v.add("expiresAt", "must be in the future")
	}
	if len(f.scopes) > MaxScopes {
		v.add("scopes", "at most %d", MaxScopes)
	}
	for i, sc := range f.scopes {
		if err := ValidatePermission(sc, true); err != nil {
			v.add(fmt.Sprintf("scopes[%d]", i), "%s", err.Error())
		}
	}
	validateTokenLimits(&v, f.limits)
	checkGrowth(&v, f.oldLimits, f.limits)
	return v.err()
}

// CreateToken issues a new token for a user.
func (s *Service) CreateToken(ctx context.Context, userID string, in NewToken) (*IssuedToken, error) {
	name := strings.TrimSpace(in.Name)
	now := s.now()
	if err := (tokenFields{name: &name, expiresAt: in.ExpiresAt, scopes: in.Scopes, limits: in.Limits}).validate(now); err != nil {
		return nil, err
	}
	if _, err := s.GetUser(ctx, userID); err != nil {
		return nil, err
	}
	secret, err := NewTokenSecret()
	if err != nil {
		return nil, fmt.Errorf("generating token: %w", err)
	}
	t := Token{
		ID: NewID(), UserID: userID, Name: name, Prefix: TokenDisplayPrefix(secret),
		Hash: HashTokenSecret(secret), CreatedAt: now, Scopes: append([]string(nil), in.Scopes...),
		Limits: in.Limits.Clone(),
	}
	if in.ExpiresAt != nil {
		exp := in.ExpiresAt.UTC().Truncate(time.Millisecond)
		t.ExpiresAt = &exp
	}
	ev := s.newEvent(ctx, EventTokenCreated, userID, tokenData{Token: t.Public()})
	if err := s.store.CreateToken(ctx, &t, ev); err != nil {
		return nil, err
	}
	s.published(ev)
	return &IssuedToken{Token: t.Public(), Secret: secret}, nil
}

// ListTokens lists a user's tokens, without secrets or hashes.
func (s *Service) ListTokens(ctx context.Context, userID string) ([]Token, error) {
	if _, err := s.GetUser(ctx, userID); err != nil {
		return nil, err
	}
	ts, err := s.store.ListTokens(ctx, userID)
	if err != nil {
		return nil, err
	}
	out := make([]Token, len(ts))
	for i, t := range ts {
		out[i] = t.Public()
	}
	return out, nil
}

// GetToken returns one token of a user, without its hash.
func (s *Service) GetToken(ctx context.Context, userID, tokenID string) (*Token, error) {
	if !validID(userID) || !validID(tokenID) {
		return nil, fmt.Errorf("token %q: %w", tokenID, ErrNotFound)
	}
	t, err := s.store.GetToken(ctx, userID, tokenID)
	if err != nil {
		return nil, err
	}
	pub := t.Public()
	return &pub, nil
}

// TokenPatch is the input of UpdateToken; nil fields are left unchanged.
type TokenPatch struct {
	Name *string
	// ExpiresAt replaces the expiry: a time in the future, or the zero
	// time for none.
	ExpiresAt *time.Time
	// Limits are merged into the token's own limits as UserPatch.Limits
	// into a user's: named resources are replaced, a nil entry removes one.
	Limits Limits
}

// UpdateToken changes a token's name, expiry or limits, by the rules of
// CreateToken, as a compare-and-swap on the token's revision (retried on
// a fresh read), with a token.updated event. Every node's cache drops the
// token, as for a revocation: a lowered limit or a shorter expiry holds
// from the next request on this node, and on the others once the
// invalidation reaches them.
func (s *Service) UpdateToken(ctx context.Context, userID, tokenID string, p TokenPatch) (*Token, error) {
	if !validID(userID) || !validID(tokenID) {
		return nil, fmt.Errorf("token %q: %w", tokenID, ErrNotFound)
	}
	if p.Name == nil && p.ExpiresAt == nil && p.Limits == nil {
		return s.GetToken(ctx, userID, tokenID) // nothing to change: no revision, no event
	}
	if p.Name != nil {
		name := strings.TrimSpace(*p.Name)
		p.Name = &name
	}
	if p.ExpiresAt != nil && !p.ExpiresAt.IsZero() {
		exp := p.ExpiresAt.UTC().Truncate(time.Millisecond)
		p.ExpiresAt = &exp
	}
	var t *Token
	var ev Event
	err := retryStale("token "+strconv.Quote(tokenID), func() error {
		old, err := s.store.GetToken(ctx, userID, tokenID)
		if err != nil {
			return err
		}
		t = old.Clone()
		f := tokenFields{name: p.Name, oldLimits: old.Limits}
		if p.Name != nil {
			t.Name = *p.Name
		}
		if p.ExpiresAt != nil {
			t.ExpiresAt = nil
			if !p.ExpiresAt.IsZero() {
				f.expiresAt, t.ExpiresAt = p.ExpiresAt, p.ExpiresAt
			}
		}
		if p.Limits != nil {
			if t.Limits = t.Limits.Merge(p.Limits); len(t.Limits) == 0 {
				t.Limits = nil
			}
			f.limits = t.Limits
		}
		if err := f.validate(s.now()); err != nil {
			return err
		}
		t.Revision = old.Revision + 1
		ev = s.newEvent(ctx, EventTokenUpdated, userID, tokenData{Token: t.Public()})
		return s.store.UpdateToken(ctx, t, ev)
	})
	if err != nil {
		if t != nil && !errors.Is(err, ErrInvalid) {
			// A write that timed out may have landed: no cache keeps the
			// token as it was (a refetch costs one read).
			s.invalidate(context.WithoutCancel(ctx), hashKey(t.Hash))
		}
		return nil, err
	}
	s.invalidate(ctx, hashKey(t.Hash))
	s.published(ev)
	pub := t.Public()
	return &pub, nil
}

// RevokeToken deletes a user's token; it is refused from the next request
// on this node.
func (s *Service) RevokeToken(ctx context.Context, userID, tokenID string) error {
	if !validID(userID) || !validID(tokenID) {
		return fmt.Errorf("token %q: %w", tokenID, ErrNotFound)
	}
	// Read first, for its hash: a delete that times out may still land,
	// and a retry then finds nothing to delete (404), so the caches are
	// cleared whatever the outcome.
	known, _ := s.store.GetToken(ctx, userID, tokenID)
	ev := s.newEvent(ctx, EventTokenRevoked, userID, tokenData{Token: Token{ID: tokenID, UserID: userID}})
	t, err := s.store.DeleteToken(ctx, userID, tokenID, ev)
	if err != nil {
		if known != nil {
			s.invalidate(context.WithoutCancel(ctx), hashKey(known.Hash))
		}
		return err
	}
	s.invalidate(ctx, hashKey(t.Hash))
	s.published(ev)
	return nil
}
