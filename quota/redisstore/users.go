package redisstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// claimTTL is how long an index claim lives before the user record that
// needs it is written. It outlives any sane call, and frees the value on its
// own if the node that claimed it dies.
const claimTTL = time.Minute

// takeOverScript replaces an orphaned permanent index key: KEYS[1] the index
// key, ARGV[1] the holder seen, ARGV[2] the new holder, ARGV[3] claim TTL ms.
// It returns 1 when taken, 0 when the key changed meanwhile, -1 when the key
// is a pending claim (it has a TTL) that must not be taken.
var takeOverScript = redis.NewScript(lua("take_over.lua"))

// persistScript makes a claim permanent if it is still ours: KEYS[1] the
// index key, ARGV[1] our user id. It returns 1 when done.
var persistScript = redis.NewScript(lua("persist.lua"))

// swapScript sets KEYS[1] to ARGV[2] only if it holds ARGV[1], and then
// appends the events (ARGV[3] retention ms, ARGV[4] count, ARGV[5...]) to
// the outbox stream KEYS[2]: it returns 1 when set, 0 when the key holds
// something else, -1 when it is gone.
var swapScript = redis.NewScript(luaOutbox + lua("swap.lua"))

// createScript sets KEYS[1] to ARGV[1] if it does not exist, with the
// events (ARGV[2] retention ms, ARGV[3] count, ARGV[4...]) appended to the
// outbox stream KEYS[2]; it returns 1 when created.
var createScript = redis.NewScript(luaOutbox + lua("create.lua"))

// deleteIfScript deletes KEYS[1] only if it still holds ARGV[1], and returns
// how many keys it deleted.
var deleteIfScript = redis.NewScript(lua("delete_if.lua"))

// deleteUserScript removes a user's own keys in one step: KEYS user, usage,
// tokens, keys, lease expiries, leases; it appends the events (ARGV[1]
// retention ms, ARGV[2] count, ARGV[3...]) to the outbox stream KEYS[7].
// It returns the user JSON followed by the token JSONs, or nil when there
// is no such user.
var deleteUserScript = redis.NewScript(luaOutbox + lua("delete_user.lua"))

// index is one unique field of a user: the index key and the value it holds.
type index struct {
	field string // "email" or "externalId", for error messages
	key   string
	value string
}

// indexes lists the unique fields u sets.
func (s *Store) indexes(u *quota.User) []index {
	ix := []index{{field: "email", key: s.emailKey(u.Email), value: u.Email}}
	if u.ExternalID != "" {
		ix = append(ix, index{field: "externalId", key: s.extKey(u.ExternalID), value: u.ExternalID})
	}
	return ix
}

// changedIndexes lists the unique fields of u that old does not hold (all of
// them when old is nil).
func (s *Store) changedIndexes(old, u *quota.User) []index {
	var out []index
	for _, ix := range s.indexes(u) {
		if old == nil || ix.value != fieldValue(old, ix.field) {
			out = append(out, ix)
		}
	}
	return out
}

func fieldValue(u *quota.User, field string) string {
	if field == "email" {
		return u.Email
	}
	return u.ExternalID
}

// claim takes ix for user id, or returns an error wrapping quota.ErrConflict
// when another user holds it. taken is false when the key already named id,
// so that a rollback leaves it alone.
func (s *Store) claim(ctx context.Context, id string, ix index) (taken bool, err error) {
	conflict := fmt.Errorf("%s already in use: %w", ix.field, quota.ErrConflict)
	for attempt := 0; attempt < 3; attempt++ {
		ok, err := s.rdb.SetNX(ctx, ix.key, id, claimTTL).Result()
		if err != nil {
			return false, fmt.Errorf("claim %s: %w", ix.field, err)
		}
		if ok {
			return true, nil
		}
		holder, err := s.rdb.Get(ctx, ix.key).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("claim %s: %w", ix.field, err)
		}
		if holder == id {
			return false, nil
		}
		// The holder keeps the value only if its record still has it; a
		// permanent key that outlived its user (a failed delete or update)
		// is taken over.
		owner, err := s.getUser(ctx, holder)
		if err == nil && fieldValue(owner, ix.field) == ix.value {
			return false, conflict
		}
		if err != nil && !errors.Is(err, quota.ErrNotFound) {
			return false, fmt.Errorf("claim %s: %w", ix.field, err)
		}
		res, err := takeOverScript.Run(ctx, s.rdb, []string{ix.key}, holder, id, claimTTL.Milliseconds()).Int64()
		if err != nil {
			return false, fmt.Errorf("claim %s: %w", ix.field, err)
		}
		switch res {
		case 1:
			// The holder's record may have been written between the read
			// above and the take-over (it was still being created): look
			// again, and give the value back if it is the holder's.
			owner, err := s.getUser(ctx, holder)
			if err == nil && fieldValue(owner, ix.field) == ix.value {
				_ = restoreScript.Run(ctx, s.rdb, []string{ix.key}, id, holder).Err()
				return false, conflict
			}
			return true, nil
		case -1:
			return false, conflict
		}
	}
	return false, conflict
}

// restoreScript gives an index key taken over by mistake back to its
// holder: KEYS[1] the index key, ARGV[1] the taker, ARGV[2] the holder.
var restoreScript = redis.NewScript(lua("restore.lua"))

// claimAll claims every index in ixs and returns those it took; when one
// fails it releases them again.
func (s *Store) claimAll(ctx context.Context, id string, ixs []index) ([]index, error) {
	var taken []index
	for _, ix := range ixs {
		ok, err := s.claim(ctx, id, ix)
		if err != nil {
			s.releaseAll(ctx, id, taken)
			return nil, err
		}
		if ok {
			taken = append(taken, ix)
		}
	}
	return taken, nil
}

// persistAll makes claims permanent.
func (s *Store) persistAll(ctx context.Context, id string, ixs []index) error {
	for _, ix := range ixs {
		ok, err := persistScript.Run(ctx, s.rdb, []string{ix.key}, id).Int64()
		if err != nil {
			return fmt.Errorf("keep %s index: %w", ix.field, err)
		}
		if ok != 1 {
			return fmt.Errorf("%s claim expired before it was kept: %w", ix.field, quota.ErrConflict)
		}
	}
	return nil
}

// releaseAll frees the index keys in ixs that still name id, best effort: a
// key left behind is taken over by the next claim.
func (s *Store) releaseAll(ctx context.Context, id string, ixs []index) {
	if len(ixs) == 0 {
		return
	}
	ctx, cancel := s.cleanupContext(ctx)
	defer cancel()
	for _, ix := range ixs {
		_ = deleteIfScript.Run(ctx, s.rdb, []string{ix.key}, id).Err()
	}
}

// CreateUser stores u, claiming its email and external id first.
func (s *Store) CreateUser(ctx context.Context, u *quota.User, events ...quota.Event) error {
	if !validID(u.ID) {
		return quota.Invalid("id", "must not be empty or contain '{' or '}'")
	}
	data, err := json.Marshal(u)
	if err != nil {
		return fmt.Errorf("encode user: %w", err)
	}
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	ixs := s.indexes(u)
	taken, err := s.claimAll(ctx, u.ID, ixs)
	if err != nil {
		return err
	}
	evArgs, err := s.eventArgs(events)
	if err != nil {
		s.releaseAll(ctx, u.ID, taken)
		return err
	}
	created, err := createScript.Run(ctx, s.rdb, []string{s.userKey(u.ID), s.eventsKey(u.ID)}, append([]any{data}, evArgs...)...).Int()
	ok := created == 1
	if err != nil {
		// The write may have landed before the error.
		s.undoCreate(ctx, u.ID, data, taken)
		return fmt.Errorf("create user: %w", err)
	}
	if !ok {
		s.releaseAll(ctx, u.ID, taken)
		return fmt.Errorf("user id already in use: %w", quota.ErrConflict)
	}
	err = s.rdb.ZAdd(ctx, s.usersKey(), redis.Z{Member: u.ID}).Err()
	if err == nil {
		err = s.persistAll(ctx, u.ID, ixs)
	}
	if err != nil {
		s.undoCreate(ctx, u.ID, data, taken)
		return fmt.Errorf("create user: %w", err)
	}
	return nil
}

// undoCreate removes what a failed CreateUser wrote: the record only if it
// is still the one written (data), never another user's with the same id.
func (s *Store) undoCreate(ctx context.Context, id string, data []byte, taken []index) {
	cctx, cancel := s.cleanupContext(ctx)
	defer cancel()
	n, err := deleteIfScript.Run(cctx, s.rdb, []string{s.userKey(id)}, data).Int64()
	if err == nil && n == 1 {
		_ = s.rdb.ZRem(cctx, s.usersKey(), id).Err()
	}
	s.releaseAll(ctx, id, taken)
}

// GetUser returns the user with that id.
func (s *Store) GetUser(ctx context.Context, id string) (*quota.User, error) {
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	return s.getUser(ctx, id)
}

func (s *Store) getUser(ctx context.Context, id string) (*quota.User, error) {
	if !validID(id) {
		return nil, fmt.Errorf("user %q: %w", id, quota.ErrNotFound)
	}
	data, err := s.rdb.Get(ctx, s.userKey(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("user %q: %w", id, quota.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get user: %w", err)
	}
	return decodeUser(data)
}

func decodeUser(data []byte) (*quota.User, error) {
	var u quota.User
	if err := json.Unmarshal(data, &u); err != nil {
		return nil, fmt.Errorf("decode user: %w", err)
	}
	return &u, nil
}

// GetUserByEmail looks a user up by normalized email.
func (s *Store) GetUserByEmail(ctx context.Context, email string) (*quota.User, error) {
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	return s.getByIndex(ctx, index{field: "email", key: s.emailKey(email), value: email})
}

// GetUserByExternalID looks a user up by external id.
func (s *Store) GetUserByExternalID(ctx context.Context, externalID string) (*quota.User, error) {
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	if externalID == "" {
		return nil, fmt.Errorf("empty external id: %w", quota.ErrNotFound)
	}
	return s.getByIndex(ctx, index{field: "externalId", key: s.extKey(externalID), value: externalID})
}

// getByIndex follows an index key; a key whose user does not hold the value
// (a pending claim, or one left behind) finds nothing.
func (s *Store) getByIndex(ctx context.Context, ix index) (*quota.User, error) {
	id, err := s.rdb.Get(ctx, ix.key).Result()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("no user with that %s: %w", ix.field, quota.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", ix.field, err)
	}
	u, err := s.getUser(ctx, id)
	if err != nil {
		return nil, err
	}
	if fieldValue(u, ix.field) != ix.value {
		return nil, fmt.Errorf("no user with that %s: %w", ix.field, quota.ErrNotFound)
	}
	return u, nil
}

// UpdateUser replaces the stored user that has u.ID. New email and external
// id values are claimed before the record changes, and the old ones released
// after.
func (s *Store) UpdateUser(ctx context.Context, u *quota.User, events ...quota.Event) error {
	data, err := json.Marshal(u)
	if err != nil {
		return fmt.Errorf("encode user: %w", err)
	}
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	if !validID(u.ID) {
		return fmt.Errorf("user %q: %w", u.ID, quota.ErrNotFound)
	}
	oldData, err := s.rdb.Get(ctx, s.userKey(u.ID)).Bytes()
	if errors.Is(err, redis.Nil) {
		return fmt.Errorf("user %q: %w", u.ID, quota.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("get user: %w", err)
	}
	old, err := decodeUser(oldData)
	if err != nil {
		return err
	}
	if old.Revision != u.Revision-1 {
		return fmt.Errorf("user %q is at revision %d, not %d: %w", u.ID, old.Revision, u.Revision-1, quota.ErrStale)
	}
	claimed := s.changedIndexes(old, u)
	taken, err := s.claimAll(ctx, u.ID, claimed)
	if err != nil {
		return err
	}
	// Written only over the record just read: a change made meanwhile (on
	// any node) makes this one stale, and a user deleted meanwhile stays
	// deleted.
	evArgs, err := s.eventArgs(events)
	if err != nil {
		s.releaseAll(ctx, u.ID, taken)
		return err
	}
	res, err := swapScript.Run(ctx, s.rdb, []string{s.userKey(u.ID), s.eventsKey(u.ID)}, append([]any{oldData, data}, evArgs...)...).Int()
	if err == nil && res != 1 {
		s.releaseAll(ctx, u.ID, taken)
		if res == 0 {
			return fmt.Errorf("user %q: %w", u.ID, quota.ErrStale)
		}
		return fmt.Errorf("user %q: %w", u.ID, quota.ErrNotFound)
	}
	if err == nil {
		err = s.persistAll(ctx, u.ID, claimed)
	}
	if err != nil {
		cctx, ccancel := s.cleanupContext(ctx)
		_ = s.rdb.SetArgs(cctx, s.userKey(u.ID), oldData, redis.SetArgs{Mode: "XX"}).Err()
		ccancel()
		s.releaseAll(ctx, u.ID, taken)
		return fmt.Errorf("update user: %w", err)
	}
	s.releaseAll(ctx, u.ID, s.changedIndexes(u, old))
	return nil
}

// DeleteUser removes the user, all of its tokens and all its counters.
// Token keys go first, so that a failure half-way never leaves a working
// token behind; a retry finishes the job.
func (s *Store) DeleteUser(ctx context.Context, id string, events ...quota.Event) error {
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	if !validID(id) {
		return fmt.Errorf("user %q: %w", id, quota.ErrNotFound)
	}
	toks, err := s.rdb.HVals(ctx, s.tokensKey(id)).Result()
	if err != nil {
		return fmt.Errorf("delete user: %w", err)
	}
	if err := s.deleteTokenKeys(ctx, toks); err != nil {
		return fmt.Errorf("delete user: %w", err)
	}
	evArgs, err := s.eventArgs(events)
	if err != nil {
		return err
	}
	vals, err := deleteUserScript.Run(ctx, s.rdb, []string{s.userKey(id), s.usageKey(id), s.tokensKey(id), s.keysKey(id), s.tag(id) + ":lease_exp", s.tag(id) + ":leases", s.eventsKey(id), s.tag(id) + ":thresholds"}, evArgs...).StringSlice()
	if errors.Is(err, redis.Nil) {
		return fmt.Errorf("user %q: %w", id, quota.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("delete user: %w", err)
	}
	if len(vals) == 0 {
		return fmt.Errorf("delete user: empty script reply")
	}
	// Tokens created since the first read.
	if err := s.deleteTokenKeys(ctx, vals[1:]); err != nil {
		return fmt.Errorf("delete user: %w", err)
	}
	if err := s.rdb.ZRem(ctx, s.usersKey(), id).Err(); err != nil {
		return fmt.Errorf("delete user: %w", err)
	}
	if old, err := decodeUser([]byte(vals[0])); err == nil {
		s.releaseAll(ctx, id, s.indexes(old))
	}
	return nil
}

// ListUsers returns up to take users with ids greater than after, in id
// order, and whether more follow.
func (s *Store) ListUsers(ctx context.Context, after string, take int) ([]*quota.User, bool, error) {
	if take <= 0 {
		return nil, false, quota.Invalid("take", "must be positive, got %d", take)
	}
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	lo := "-"
	if after != "" {
		lo = "(" + after
	}
	out := make([]*quota.User, 0, take)
	for {
		want := take + 1 - len(out)
		ids, err := s.rdb.ZRangeByLex(ctx, s.usersKey(), &redis.ZRangeBy{Min: lo, Max: "+", Count: int64(want)}).Result()
		if err != nil {
			return nil, false, fmt.Errorf("list users: %w", err)
		}
		users, err := s.getUsers(ctx, ids)
		if err != nil {
			return nil, false, err
		}
		out = append(out, users...)
		if len(out) > take {
			return out[:take], true, nil
		}
		if len(ids) < want {
			return out, false, nil
		}
		// Some listed ids had no record (a delete half done); read on.
		lo = "(" + ids[len(ids)-1]
	}
}

// getUsers fetches users by id in one pipeline (split by slot on Cluster),
// skipping ids without a record.
func (s *Store) getUsers(ctx context.Context, ids []string) ([]*quota.User, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, 0, len(ids))
	for _, id := range ids {
		if validID(id) {
			cmds = append(cmds, pipe.Get(ctx, s.userKey(id)))
		}
	}
	if err := execPipe(ctx, pipe); err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	users := make([]*quota.User, 0, len(cmds))
	for _, cmd := range cmds {
		data, err := cmd.Bytes()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list users: %w", err)
		}
		u, err := decodeUser(data)
		if err != nil {
			return nil, err
		}
		users = append(users, u)
	}
	return users, nil
}
