package redisstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// addTokenScript adds a token to an existing user: KEYS user, tokens;
// ARGV token id, token JSON. It returns 1 when added, 0 when there is no
// such user, -1 when the token id is taken.
var addTokenScript = redis.NewScript(luaOutbox + lua("add_token.lua"))

// dropTokenScript removes field ARGV[1] of the tokens hash KEYS[1] and, if
// it was there, appends the events (ARGV[2] retention ms, ARGV[3] count,
// ARGV[4...]) to the outbox stream KEYS[2]; it returns how many it removed.
var dropTokenScript = redis.NewScript(luaOutbox + lua("drop_token.lua"))

// swapTokenScript sets field ARGV[1] of the tokens hash KEYS[1] to ARGV[3]
// only if it holds ARGV[2], and then appends the events (ARGV[4]
// retention ms, ARGV[5] count, ARGV[6...]) to the outbox stream KEYS[2]:
// it returns 1 when set, 0 when the field holds something else, -1 when
// it is gone.
var swapTokenScript = redis.NewScript(luaOutbox + lua("swap_token.lua"))

// putTokenScript writes the token JSON ARGV[2] to KEYS[1], a token's
// lookup key (ARGV[1] "") or field ARGV[1] of a user's tokens hash, only
// if a token is there whose revision is between ARGV[3] and ARGV[4]: an
// update (0 to its revision - 1) never goes back over a later one, a
// touch (its revision alone) never over an update, and neither brings
// back a revoked token. It returns 1 when written, 0 when the stored
// revision is outside, -1 when no token is there.
var putTokenScript = redis.NewScript(lua("put_token.lua"))

// CreateToken stores a token of an existing user: first in the user's
// tokens hash (atomically with the check that the user exists), then under
// its hash for lookups.
func (s *Store) CreateToken(ctx context.Context, t *quota.Token, events ...quota.Event) error {
	if t.ID == "" || t.Hash == "" {
		return quota.Invalid("token", "id and hash are required")
	}
	data, err := json.Marshal(t)
	if err != nil {
		return fmt.Errorf("encode token: %w", err)
	}
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	if !validID(t.UserID) {
		return fmt.Errorf("user %q: %w", t.UserID, quota.ErrNotFound)
	}
	evArgs, err := s.eventArgs(events)
	if err != nil {
		return err
	}
	res, err := addTokenScript.Run(ctx, s.rdb, []string{s.userKey(t.UserID), s.tokensKey(t.UserID), s.eventsKey(t.UserID)}, append([]any{t.ID, data}, evArgs...)...).Int64()
	if err != nil {
		return fmt.Errorf("create token: %w", err)
	}
	switch res {
	case 0:
		return fmt.Errorf("user %q: %w", t.UserID, quota.ErrNotFound)
	case -1:
		return fmt.Errorf("token id already in use: %w", quota.ErrConflict)
	}
	ok, err := s.rdb.SetNX(ctx, s.tokKey(t.Hash), data, 0).Result()
	if err != nil || !ok {
		cctx, ccancel := s.cleanupContext(ctx)
		defer ccancel()
		_ = s.rdb.HDel(cctx, s.tokensKey(t.UserID), t.ID).Err()
		if err == nil {
			return fmt.Errorf("token hash already in use: %w", quota.ErrConflict)
		}
		_ = deleteIfScript.Run(cctx, s.rdb, []string{s.tokKey(t.Hash)}, data).Err()
		return fmt.Errorf("create token: %w", err)
	}
	// A DeleteUser that ran between the two writes may have missed the
	// lookup key; check, so the token cannot outlive its user.
	n, err := s.rdb.Exists(ctx, s.userKey(t.UserID)).Result()
	if err == nil && n == 0 {
		err = fmt.Errorf("user %q: %w", t.UserID, quota.ErrNotFound)
	}
	if err != nil {
		cctx, ccancel := s.cleanupContext(ctx)
		defer ccancel()
		_ = deleteIfScript.Run(cctx, s.rdb, []string{s.tokKey(t.Hash)}, data).Err()
		_ = s.rdb.HDel(cctx, s.tokensKey(t.UserID), t.ID).Err() // not listed, never usable
		return fmt.Errorf("create token: %w", err)
	}
	return nil
}

// GetTokenByHash returns the token whose secret hashes to hash. The
// lookup key names the token (its user and id); the token itself is read
// from its user's tokens hash, the one copy that changes (UpdateToken) and
// that a revocation removes first: a lookup key that an interrupted write
// left behind can neither keep old limits nor bring back a revoked token.
func (s *Store) GetTokenByHash(ctx context.Context, hash string) (*quota.Token, error) {
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	data, err := s.rdb.Get(ctx, s.tokKey(hash)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("token: %w", quota.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get token: %w", err)
	}
	ref, err := decodeToken(data)
	if err != nil {
		return nil, err
	}
	if !validID(ref.UserID) {
		return nil, fmt.Errorf("token: %w", quota.ErrNotFound)
	}
	data, err = s.rdb.HGet(ctx, s.tokensKey(ref.UserID), ref.ID).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("token: %w", quota.ErrNotFound) // revoked
	}
	if err != nil {
		return nil, fmt.Errorf("get token: %w", err)
	}
	t, err := decodeToken(data)
	if err != nil {
		return nil, err
	}
	if t.Hash != hash {
		return nil, fmt.Errorf("token: %w", quota.ErrNotFound)
	}
	return t, nil
}

func decodeToken(data []byte) (*quota.Token, error) {
	var t quota.Token
	if err := json.Unmarshal(data, &t); err != nil {
		return nil, fmt.Errorf("decode token: %w", err)
	}
	return &t, nil
}

// GetToken returns one token of a user by its id, from the user's
// tokens hash.
func (s *Store) GetToken(ctx context.Context, userID, tokenID string) (*quota.Token, error) {
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	data, err := s.userToken(ctx, userID, tokenID, "get token")
	if err != nil {
		return nil, err
	}
	return decodeToken(data)
}

// userToken reads the JSON of one token of a user from its tokens hash;
// op names the caller in an error.
func (s *Store) userToken(ctx context.Context, userID, tokenID, op string) ([]byte, error) {
	if !validID(userID) {
		return nil, fmt.Errorf("token %q: %w", tokenID, quota.ErrNotFound)
	}
	data, err := s.rdb.HGet(ctx, s.tokensKey(userID), tokenID).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("token %q: %w", tokenID, quota.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	return data, nil
}

// UpdateToken replaces a token in the user's tokens hash, over the JSON it
// read (so a touch since makes it stale too), with its events in the same
// script. Authentication reads tokens from that hash (GetTokenByHash), so
// the change holds from this write on.
func (s *Store) UpdateToken(ctx context.Context, t *quota.Token, events ...quota.Event) error {
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	oldData, err := s.userToken(ctx, t.UserID, t.ID, "update token")
	if err != nil {
		return err
	}
	old, err := decodeToken(oldData)
	if err != nil {
		return err
	}
	c, err := t.Replacing(old)
	if err != nil {
		return err
	}
	data, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode token: %w", err)
	}
	evArgs, err := s.eventArgs(events)
	if err != nil {
		return err
	}
	res, err := swapTokenScript.Run(ctx, s.rdb, []string{s.tokensKey(t.UserID), s.eventsKey(t.UserID)}, append([]any{t.ID, oldData, data}, evArgs...)...).Int()
	switch {
	case err != nil:
		return fmt.Errorf("update token: %w", err)
	case res == 0:
		return fmt.Errorf("token %q: %w", t.ID, quota.ErrStale)
	case res == -1:
		return fmt.Errorf("token %q: %w", t.ID, quota.ErrNotFound)
	}
	// Authentication reads the token from the hash just written. The
	// lookup key's copy is for nodes of an older version during a rolling
	// upgrade: best effort (TouchTokens repairs it too).
	_ = putTokenScript.Run(ctx, s.rdb, []string{s.tokKey(old.Hash)}, "", data, 0, c.Revision-1).Err()
	return nil
}

// ListTokens returns a user's tokens in creation order.
func (s *Store) ListTokens(ctx context.Context, userID string) ([]*quota.Token, error) {
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	if !validID(userID) {
		return nil, fmt.Errorf("user %q: %w", userID, quota.ErrNotFound)
	}
	// Both keys share the user's slot, so one transaction reads them.
	var exists *redis.IntCmd
	var vals *redis.StringSliceCmd
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		exists = p.Exists(ctx, s.userKey(userID))
		vals = p.HVals(ctx, s.tokensKey(userID))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	if exists.Val() == 0 {
		return nil, fmt.Errorf("user %q: %w", userID, quota.ErrNotFound)
	}
	out := make([]*quota.Token, 0, len(vals.Val()))
	for _, v := range vals.Val() {
		t, err := decodeToken([]byte(v))
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// DeleteToken revokes one token of a user and returns it. The lookup key
// goes first: once it is gone the token no longer authenticates, even if
// removing it from the user's list then fails (a retry finishes).
func (s *Store) DeleteToken(ctx context.Context, userID, tokenID string, events ...quota.Event) (*quota.Token, error) {
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	data, err := s.userToken(ctx, userID, tokenID, "delete token")
	if err != nil {
		return nil, err
	}
	t, err := decodeToken(data)
	if err != nil {
		return nil, err
	}
	if err := s.rdb.Del(ctx, s.tokKey(t.Hash)).Err(); err != nil {
		return nil, fmt.Errorf("delete token: %w", err)
	}
	evArgs, err := s.eventArgs(events)
	if err != nil {
		return nil, err
	}
	n, err := dropTokenScript.Run(ctx, s.rdb, []string{s.tokensKey(userID), s.eventsKey(userID)}, append([]any{tokenID}, evArgs...)...).Int64()
	if err != nil {
		return nil, fmt.Errorf("delete token: %w", err)
	}
	if n == 0 {
		// A concurrent DeleteToken won.
		return nil, fmt.Errorf("token %q: %w", tokenID, quota.ErrNotFound)
	}
	s.dropTokenCounters(ctx, userID, tokenID)
	return t, nil
}

// tokenCounterScan is how many fields one HSCAN step of dropTokenCounters
// asks for.
const tokenCounterScan = 500

// dropTokenCounters removes a revoked token's own counters (fields
// "t.<id>." of its user's usage hash) and distinct keys, best effort: in
// HSCAN steps, never one long script (a user's distinct-key hash holds up
// to DistinctKeys fields), under a deadline of its own. What is left goes
// with the user.
func (s *Store) dropTokenCounters(ctx context.Context, userID, tokenID string) {
	ctx, cancel := s.cleanupContext(ctx)
	defer cancel()
	match := quota.TokenResource(tokenID, "") + "*" // ids hold no glob characters
	for _, key := range []string{s.usageKey(userID), s.keysKey(userID)} {
		var cursor uint64
		for {
			fields, next, err := s.rdb.HScan(ctx, key, cursor, match, tokenCounterScan).Result()
			if err != nil {
				return
			}
			names := make([]string, 0, len(fields)/2)
			for i := 0; i+1 < len(fields); i += 2 {
				names = append(names, fields[i])
			}
			if len(names) > 0 {
				if err := s.rdb.HDel(ctx, key, names...).Err(); err != nil {
					return
				}
			}
			if cursor = next; cursor == 0 {
				break
			}
		}
	}
}

// deleteTokenKeys removes the lookup keys of the given token JSONs in one
// pipeline (split by slot on Cluster).
func (s *Store) deleteTokenKeys(ctx context.Context, tokens []string) error {
	if len(tokens) == 0 {
		return nil
	}
	pipe := s.rdb.Pipeline()
	for _, v := range tokens {
		t, err := decodeToken([]byte(v))
		if err != nil {
			return err
		}
		pipe.Del(ctx, s.tokKey(t.Hash))
	}
	return execPipe(ctx, pipe)
}

// TouchTokens records last-used times, best effort, in three pipelines:
// the lookup keys name the tokens, their users' tokens hashes hold them,
// and each is written back to the hash only if it is still at the
// revision read (an update or a revocation made meanwhile stays; the
// touch is dropped) and to the lookup key only if that holds no later
// revision (which also brings a lookup key that an interrupted update
// left behind up to date, for older nodes that read it). Unknown hashes
// and times not after the stored one are skipped. Concurrent touches of
// one token may leave either time; both are recent.
func (s *Store) TouchTokens(ctx context.Context, used map[string]time.Time) error {
	if len(used) == 0 {
		return nil
	}
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	hashes := make([]string, 0, len(used))
	pipe := s.rdb.Pipeline()
	refs := make([]*redis.StringCmd, 0, len(used))
	for h := range used {
		hashes = append(hashes, h)
		refs = append(refs, pipe.Get(ctx, s.tokKey(h)))
	}
	if err := execPipe(ctx, pipe); err != nil {
		return fmt.Errorf("touch tokens: %w", err)
	}
	pipe = s.rdb.Pipeline()
	gets := make([]*redis.StringCmd, len(refs))
	reads := 0
	for i, ref := range refs {
		data, err := ref.Bytes()
		if err != nil {
			continue
		}
		t, err := decodeToken(data)
		if err != nil || !validID(t.UserID) {
			continue
		}
		gets[i] = pipe.HGet(ctx, s.tokensKey(t.UserID), t.ID)
		reads++
	}
	if reads == 0 {
		return nil
	}
	if err := execPipe(ctx, pipe); err != nil {
		return fmt.Errorf("touch tokens: %w", err)
	}
	pipe = s.rdb.Pipeline()
	writes := 0
	for i, get := range gets {
		if get == nil {
			continue
		}
		data, err := get.Bytes()
		if err != nil {
			continue
		}
		t, err := decodeToken(data)
		if err != nil || t.Hash != hashes[i] || !validID(t.UserID) {
			continue
		}
		if !t.Touch(used[hashes[i]]) {
			continue
		}
		out, err := json.Marshal(t)
		if err != nil {
			return fmt.Errorf("encode token: %w", err)
		}
		// EVAL, not EVALSHA: a pipeline cannot fall back on NOSCRIPT.
		putTokenScript.Eval(ctx, pipe, []string{s.tokensKey(t.UserID)}, t.ID, out, t.Revision, t.Revision)
		putTokenScript.Eval(ctx, pipe, []string{s.tokKey(hashes[i])}, "", out, 0, t.Revision)
		writes++
	}
	if writes == 0 {
		return nil
	}
	if err := execPipe(ctx, pipe); err != nil {
		return fmt.Errorf("touch tokens: %w", err)
	}
	return nil
}

// execPipe runs pipe and returns the first error of its commands other than
// redis.Nil (a missing key, which callers expect).
func execPipe(ctx context.Context, pipe redis.Pipeliner) error {
	cmds, err := pipe.Exec(ctx)
	if err == nil {
		return nil
	}
	for _, c := range cmds {
		if cerr := c.Err(); cerr != nil && !errors.Is(cerr, redis.Nil) {
			return cerr
		}
	}
	if errors.Is(err, redis.Nil) {
		return nil
	}
	return err
}
