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

// hsetIfExistsScript sets hash field ARGV[1] of KEYS[1] to ARGV[2] only if
// the field exists, so that a touch never brings back a revoked token.
var hsetIfExistsScript = redis.NewScript(lua("hset_if_exists.lua"))

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
		return fmt.Errorf("create token: %w", err)
	}
	return nil
}

// GetTokenByHash returns the token whose secret hashes to hash.
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
	return decodeToken(data)
}

func decodeToken(data []byte) (*quota.Token, error) {
	var t quota.Token
	if err := json.Unmarshal(data, &t); err != nil {
		return nil, fmt.Errorf("decode token: %w", err)
	}
	return &t, nil
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
	if !validID(userID) {
		return nil, fmt.Errorf("token %q: %w", tokenID, quota.ErrNotFound)
	}
	data, err := s.rdb.HGet(ctx, s.tokensKey(userID), tokenID).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("token %q: %w", tokenID, quota.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("delete token: %w", err)
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
	return t, nil
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

// TouchTokens records last-used times, best effort: one pipeline reads the
// tokens, a second writes them back to the lookup key (SET XX) and to the
// user's hash (only if the field exists), so a token revoked meanwhile stays
// revoked. Unknown hashes and times not after the stored one are skipped.
// Concurrent touches of one token may leave either time; both are recent.
func (s *Store) TouchTokens(ctx context.Context, used map[string]time.Time) error {
	if len(used) == 0 {
		return nil
	}
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	hashes := make([]string, 0, len(used))
	pipe := s.rdb.Pipeline()
	gets := make([]*redis.StringCmd, 0, len(used))
	for h := range used {
		hashes = append(hashes, h)
		gets = append(gets, pipe.Get(ctx, s.tokKey(h)))
	}
	if err := execPipe(ctx, pipe); err != nil {
		return fmt.Errorf("touch tokens: %w", err)
	}
	pipe = s.rdb.Pipeline()
	writes := 0
	for i, get := range gets {
		data, err := get.Bytes()
		if err != nil {
			continue
		}
		t, err := decodeToken(data)
		if err != nil || !validID(t.UserID) {
			continue
		}
		if !t.Touch(used[hashes[i]]) {
			continue
		}
		out, err := json.Marshal(t)
		if err != nil {
			return fmt.Errorf("encode token: %w", err)
		}
		pipe.SetArgs(ctx, s.tokKey(hashes[i]), out, redis.SetArgs{Mode: "XX"})
		// EVAL, not EVALSHA: a pipeline cannot fall back on NOSCRIPT.
		hsetIfExistsScript.Eval(ctx, pipe, []string{s.tokensKey(t.UserID)}, t.ID, out)
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
