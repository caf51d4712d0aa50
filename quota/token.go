package quota

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"math/big"
	"strings"
	"time"
)

// Token is a user's API token as stored: never the secret, only its SHA-256.
type Token struct {
	ID         string     `json:"id"`
	UserID     string     `json:"userId"`
	Name       string     `json:"name"`
	Prefix     string     `json:"prefix"`
	Hash       string     `json:"hash,omitempty"`
	CreatedAt  time.Time  `json:"createdAt"`
	ExpiresAt  *time.Time `json:"expiresAt,omitempty"`
	LastUsedAt *time.Time `json:"lastUsedAt,omitempty"`
	// Scopes, if any, are the permission patterns the token may exercise
	// (within what its user's roles grant); none: all of its user's.
	Scopes []string `json:"scopes,omitempty"`
	// Limits, if any, are the token's own limits, charged together with
	// its user's.
	Limits Limits `json:"limits,omitempty"`
	// Revision counts the changes made to the token (a touch is none);
	// Store.UpdateToken writes over the revision it was read at only.
	Revision int64 `json:"revision,omitempty"`
}

// MaxScopes caps a token's scopes.
const MaxScopes = 64

// Allows reports whether the token's scopes allow perm.
func (t *Token) Allows(perm string) bool {
	return len(t.Scopes) == 0 || AnyPermits(t.Scopes, perm)
}

// Clone returns a deep copy of t.
func (t *Token) Clone() *Token {
	c := *t
	c.Scopes = append([]string(nil), t.Scopes...)
	c.Limits = t.Limits.Clone()
	for _, p := range []**time.Time{&c.ExpiresAt, &c.LastUsedAt} {
		if *p != nil {
			v := **p
			*p = &v
		}
	}
	return &c
}

// Replacing is what a store writes for UpdateToken: t over old, the
// stored token, if old is at the revision t was read at (else ErrStale),
// keeping old's hash and creation time and the later of the two
// last-used times. The one rule both stores apply.
func (t *Token) Replacing(old *Token) (*Token, error) {
	if old.Revision != t.Revision-1 {
		return nil, fmt.Errorf("token %q is at revision %d, not %d: %w", t.ID, old.Revision, t.Revision-1, ErrStale)
	}
	c := *t
	c.Hash, c.CreatedAt, c.LastUsedAt = old.Hash, old.CreatedAt, old.LastUsedAt
	if t.LastUsedAt != nil {
		c.Touch(*t.LastUsedAt)
	}
	return &c, nil
}

// Public returns a copy of t without its hash, for API responses.
func (t Token) Public() Token {
	t.Hash = ""
	return t
}

// Expired reports whether t has expired at now.
func (t *Token) Expired(now time.Time) bool {
	return t.ExpiresAt != nil && !now.Before(*t.ExpiresAt)
}

// Token secrets look like "tq_" + 43 base62 characters of randomness
// (256 bits) + 6 base62 characters of a CRC-32 checksum over the random part,
// so a mistyped or forged token is refused without a store lookup.
const (
	TokenPrefix       = "tq_"
	tokenRandomLen    = 43
	tokenChecksumLen  = 6
	TokenLength       = len(TokenPrefix) + tokenRandomLen + tokenChecksumLen
	tokenDisplayChars = 10
	base62            = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)

// NewTokenSecret returns a fresh random token secret.
func NewTokenSecret() (string, error) {
	buf := make([]byte, 32)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	random := encodeBase62(new(big.Int).SetBytes(buf), tokenRandomLen)
	return TokenPrefix + random + tokenChecksum(random), nil
}

// ParseTokenSecret checks the format and checksum of a presented secret and
// returns its SHA-256 (hex) for the store lookup.
func ParseTokenSecret(secret string) (hash string, ok bool) {
	if !wellFormed(secret) {
		return "", false
	}
	return HashTokenSecret(secret), true
}

// shapedLikeToken is the cheap part of wellFormed: length and prefix.
func shapedLikeToken(secret string) bool {
	return len(secret) == TokenLength && strings.HasPrefix(secret, TokenPrefix)
}

// wellFormed checks a secret's format and checksum.
func wellFormed(secret string) bool {
	if !shapedLikeToken(secret) {
		return false
	}
	body := secret[len(TokenPrefix):]
	for i := 0; i < len(body); i++ {
		if !isBase62[body[i]] {
			return false
		}
	}
	random, sum := body[:tokenRandomLen], body[tokenRandomLen:]
	want := checksumOf(random)
	return string(want[:]) == sum // compared without allocating
}

// HashTokenSecret returns the hex SHA-256 of a secret, as stored.
func HashTokenSecret(secret string) string {
	return tokenKey(secret)[len(tokenKeyPrefix):]
}

// tokenKey returns the hot-cache key of a secret's token: tokenKeyPrefix
// and the hex SHA-256 of the secret, made with one allocation (this runs
// for every request).
func tokenKey(secret string) string {
	var in [TokenLength]byte
	var h [sha256.Size]byte
	if len(secret) <= len(in) {
		h = sha256.Sum256(in[:copy(in[:], secret)])
	} else {
		h = sha256.Sum256([]byte(secret))
	}
	var out [len(tokenKeyPrefix) + 2*sha256.Size]byte
	copy(out[:], tokenKeyPrefix)
	hex.Encode(out[len(tokenKeyPrefix):], h[:])
	return string(out[:])
}

// Touch records a use of the token at at, if later than the last one
// recorded (a last-used time only moves forward), and reports whether it
// did. Every store's TouchTokens applies it.
func (t *Token) Touch(at time.Time) bool {
	at = at.UTC()
	if t.LastUsedAt != nil && !at.After(*t.LastUsedAt) {
		return false
	}
	t.LastUsedAt = &at
	return true
}

// TokenDisplayPrefix returns the first characters of a secret, safe to show.
func TokenDisplayPrefix(secret string) string {
	if len(secret) < tokenDisplayChars {
		return secret
	}
	return secret[:tokenDisplayChars]
}

// tokenChecksum is the base62 CRC-32 of the random part; it runs on every
// request, so it avoids big.Int.
func tokenChecksum(random string) string {
	out := checksumOf(random)
	return string(out[:])
}

func checksumOf(random string) [tokenChecksumLen]byte {
	var out [tokenChecksumLen]byte
	// crc32.ChecksumIEEE, bytewise from its table: the library's call
	// would copy random to the heap on every request.
	n := ^uint32(0)
	for i := 0; i < len(random); i++ {
		n = crc32.IEEETable[byte(n)^random[i]] ^ (n >> 8)
	}
	n = ^n
	for i := tokenChecksumLen - 1; i >= 0; i-- {
		out[i] = base62[n%62]
		n /= 62
	}
	return out
}

func encodeBase62(n *big.Int, width int) string {
	out := make([]byte, width)
	base := big.NewInt(62)
	mod := new(big.Int)
	n = new(big.Int).Set(n)
	for i := width - 1; i >= 0; i-- {
		n.DivMod(n, base, mod)
		out[i] = base62[mod.Int64()]
	}
	return string(out)
}

// isBase62 tells the bytes of base62.
var isBase62 = func() (t [256]bool) {
	for i := 0; i < len(base62); i++ {
		t[base62[i]] = true
	}
	return t
}()
