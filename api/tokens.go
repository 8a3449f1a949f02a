package api

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"time"
)

// ErrBadToken: the token is malformed, forged or expired.
var ErrBadToken = errors.New("invalid or expired token")

// Tokens issues and verifies client tokens. A token is signed (HMAC-SHA256)
// rather than looked up, so every stream server can verify it with the shared
// secret and no access to the API's metadata store.
type Tokens struct {
	secret []byte
	ttl    time.Duration
	now    func() time.Time
}

// NewTokens returns a token issuer; secret must be at least 32 bytes.
func NewTokens(secret []byte, ttl time.Duration) (*Tokens, error) {
	if len(secret) < 32 {
		return nil, errors.New("cannot use token secret: shorter than 32 bytes")
	}
	return &Tokens{secret: secret, ttl: ttl, now: time.Now}, nil
}

const tokenPrefix = "tk_"

// Issue returns a token for clientID valid for the configured TTL.
func (t *Tokens) Issue(clientID string) string {
	payload := clientID + "." + strconv.FormatInt(t.now().Add(t.ttl).Unix(), 10)
	enc := base64.RawURLEncoding.EncodeToString([]byte(payload))
	return tokenPrefix + enc + "." + t.sign(enc)
}

// Verify returns the client id a valid token was issued to.
func (t *Tokens) Verify(token string) (string, error) {
	rest, ok := strings.CutPrefix(token, tokenPrefix)
	if !ok {
		return "", ErrBadToken
	}
	enc, sig, ok := strings.Cut(rest, ".")
	if !ok || !hmac.Equal([]byte(sig), []byte(t.sign(enc))) {
		return "", ErrBadToken
	}
	raw, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		return "", ErrBadToken
	}
	clientID, expStr, ok := strings.Cut(string(raw), ".")
	exp, err := strconv.ParseInt(expStr, 10, 64)
	if !ok || err != nil || clientID == "" {
		return "", ErrBadToken
	}
	if t.now().Unix() >= exp {
		return "", ErrBadToken
	}
	return clientID, nil
}

func (t *Tokens) sign(enc string) string {
	m := hmac.New(sha256.New, t.secret)
	m.Write([]byte(enc))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}
