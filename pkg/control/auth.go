package control

import (
	"crypto/hmac"
	"crypto/md5" //nolint:gosec // RFC 8489 section 9.2.2 mandates MD5 for the default key
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // TURN REST API (coturn static-auth-secret) uses HMAC-SHA1
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash"
	"maps"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/pion/stun/v3"
)

// credentials is one immutable generation of users and REST secrets; a
// reload swaps the whole value (Server.SetCredentials).
type credentials struct {
	users   map[string]string
	secrets []string
}

// authFailure names why a request was not authenticated; the names are the
// keys of ServerStats.AuthFailures.
type authFailure int

const (
	authMissing      authFailure = iota // no MESSAGE-INTEGRITY: the normal first 401
	authBadRequest                      // MI without USERNAME/REALM/NONCE (400)
	authStaleNonce                      // 438
	authBadNonce                        // nonce not issued by us (438 as well)
	authUnknownUser                     // no such user and not a REST username
	authExpired                         // REST username whose expiry has passed
	authBadIntegrity                    // MESSAGE-INTEGRITY mismatch
	authWrongRealm                      // REALM differs from ours
	authRateLimited                     // dropped by the per-IP limiter
	numAuthFailures
)

var authFailureNames = [numAuthFailures]string{
	"missing_credentials", "bad_request", "stale_nonce", "bad_nonce",
	"unknown_user", "expired_rest_credential", "bad_integrity", "wrong_realm", "rate_limited",
}

// Password algorithms, RFC 8489 section 18.5.
const (
	pwAlgMD5    = 0x0001
	pwAlgSHA256 = 0x0002
)

// longTermKey derives the long-term credential key, RFC 8489 section 9.2.2:
// MD5(username ":" realm ":" password) by default, SHA-256 of the same
// string when the client chose PASSWORD-ALGORITHM SHA-256.
func longTermKey(username, realm, password string, alg uint16) []byte {
	var h hash.Hash
	if alg == pwAlgSHA256 {
		h = sha256.New()
	} else {
		h = md5.New() //nolint:gosec
	}
	h.Write([]byte(username + ":" + realm + ":" + password))
	return h.Sum(nil)
}

// restPassword is the TURN REST API password for username under secret:
// base64(HMAC-SHA1(secret, username)) (draft-uberti-behave-turn-rest-00
// section 2.2, coturn's static-auth-secret).
func restPassword(secret, username string) string {
	m := hmac.New(sha1.New, []byte(secret))
	m.Write([]byte(username))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// RESTCredentials returns a TURN REST username and password valid until
// expiry for user under secret (what a web application hands to a browser).
func RESTCredentials(secret, user string, expiry time.Time) (username, password string) {
	username = strconv.FormatInt(expiry.Unix(), 10)
	if user != "" {
		username += ":" + user
	}
	return username, restPassword(secret, username)
}

// passwords returns the candidate passwords for username: the static one, or
// one per REST secret when username is "expiry[:user]" with a future expiry.
func (c *credentials) passwords(username string, now time.Time) ([]string, authFailure) {
	if p, ok := c.users[username]; ok {
		return []string{p}, 0
	}
	if len(c.secrets) == 0 {
		return nil, authUnknownUser
	}
	ts, _, _ := strings.Cut(username, ":")
	exp, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || ts == "" || ts[0] == '+' || ts[0] == '-' {
		return nil, authUnknownUser
	}
	if exp <= now.Unix() {
		return nil, authExpired
	}
	out := make([]string, 0, len(c.secrets))
	for _, s := range c.secrets {
		out = append(out, restPassword(s, username))
	}
	return out, 0
}

// quotaKey is the name allocations are counted under for the per-user
// quota: a static user's name, or the user part of a TURN REST username
// ("expiry:user"), so that a fresh expiry does not open a fresh quota. A
// REST username without a user part counts as itself.
func (c *credentials) quotaKey(username string) string {
	if _, ok := c.users[username]; ok {
		return username
	}
	if ts, user, ok := strings.Cut(username, ":"); ok && user != "" && ts != "" {
		if _, err := strconv.ParseInt(ts, 10, 64); err == nil {
			return "rest:" + user
		}
	}
	return username
}

func newCredentials(users map[string]string, secrets []string) *credentials {
	c := &credentials{users: maps.Clone(users), secrets: append([]string(nil), secrets...)}
	if c.users == nil {
		c.users = map[string]string{}
	}
	return c
}

// nonceSource issues stateless nonces: 16 hex digits of issue time (unix
// ns) followed by a truncated HMAC over the time and the client IP, so a
// nonce is bound to its client and its age is known without a table
// (RFC 8489 section 9.2: the server decides validity and expiry).
type nonceSource struct {
	key [32]byte
}

func newNonceSource() (*nonceSource, error) {
	n := &nonceSource{}
	if _, err := rand.Read(n.key[:]); err != nil {
		return nil, errors.Join(errors.New("read random nonce key"), err)
	}
	return n, nil
}

func (n *nonceSource) mac(ts uint64, ip netip.Addr) []byte {
	m := hmac.New(sha256.New, n.key[:])
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], ts)
	m.Write(b[:])
	a := ip.Unmap().As16()
	m.Write(a[:])
	return m.Sum(nil)[:12]
}

func (n *nonceSource) issue(ip netip.Addr, now time.Time) string {
	ts := uint64(now.UnixNano()) //nolint:gosec // positive after 1970
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], ts)
	return hex.EncodeToString(b[:]) + hex.EncodeToString(n.mac(ts, ip))
}

// check returns 0 for a fresh nonce of ours, authStaleNonce when it is ours
// but older than life, authBadNonce otherwise.
func (n *nonceSource) check(nonce string, ip netip.Addr, now time.Time, life time.Duration) authFailure {
	if len(nonce) != 16+24 {
		return authBadNonce
	}
	tb, err := hex.DecodeString(nonce[:16])
	if err != nil {
		return authBadNonce
	}
	mb, err := hex.DecodeString(nonce[16:])
	if err != nil {
		return authBadNonce
	}
	ts := binary.BigEndian.Uint64(tb)
	if subtle.ConstantTimeCompare(mb, n.mac(ts, ip)) != 1 {
		return authBadNonce
	}
	issued := time.Unix(0, int64(ts)) //nolint:gosec
	if now.Sub(issued) > life || issued.After(now.Add(time.Minute)) {
		return authStaleNonce
	}
	return 0
}

// findAttr returns the offset of the first attribute of type t in a STUN
// message that was already validated by stun.Message.Decode, and its
// value.
func findAttr(raw []byte, t stun.AttrType) (int, []byte, bool) {
	off := 20
	for off+4 <= len(raw) {
		at := stun.AttrType(binary.BigEndian.Uint16(raw[off:]))
		l := int(binary.BigEndian.Uint16(raw[off+2:]))
		if off+4+l > len(raw) {
			return 0, nil, false
		}
		if at == t {
			return off, raw[off+4 : off+4+l], true
		}
		off += 4 + (l+3)&^3
	}
	return 0, nil, false
}

// checkIntegritySHA256 verifies MESSAGE-INTEGRITY-SHA256 (RFC 8489 section
// 14.6): HMAC-SHA256 over the message up to the attribute, with the header
// length covering the attribute itself; the value may be truncated to 16..32
// bytes in multiples of 4.
func checkIntegritySHA256(raw, key []byte) bool {
	off, val, ok := findAttr(raw, stun.AttrMessageIntegritySHA256)
	if !ok || len(val) < 16 || len(val) > 32 || len(val)%4 != 0 {
		return false
	}
	buf := make([]byte, off)
	copy(buf, raw[:off])
	binary.BigEndian.PutUint16(buf[2:4], uint16(off-20+4+len(val))) //nolint:gosec // bounded by message size
	m := hmac.New(sha256.New, key)
	m.Write(buf)
	return subtle.ConstantTimeCompare(m.Sum(nil)[:len(val)], val) == 1
}

// addIntegritySHA256 appends a full 32-byte MESSAGE-INTEGRITY-SHA256.
func addIntegritySHA256(msg *stun.Message, key []byte) {
	l := msg.Length
	msg.Length += 4 + 32
	msg.WriteLength()
	m := hmac.New(sha256.New, key)
	m.Write(msg.Raw)
	sum := m.Sum(nil)
	msg.Length = l
	msg.Add(stun.AttrMessageIntegritySHA256, sum)
}

// passwordAlgorithm reads PASSWORD-ALGORITHM (RFC 8489 section 14.12):
// algorithm (16 bits), parameters length (16 bits), parameters.
func passwordAlgorithm(m *stun.Message) (uint16, error) {
	v, err := m.Get(stun.AttrPasswordAlgorithm)
	if err != nil {
		return pwAlgMD5, nil
	}
	if len(v) < 4 {
		return 0, errBadAttr
	}
	alg := binary.BigEndian.Uint16(v)
	if alg != pwAlgMD5 && alg != pwAlgSHA256 {
		return 0, errBadAttr
	}
	return alg, nil
}
