package router

import (
	"bytes"
	"crypto/hmac"
	"crypto/md5"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, both sides:
// the router is the server for its clients and the client for PostgreSQL.
// Written on the standard library (crypto/pbkdf2, hmac, sha256) rather than
// github.com/xdg-go/scram: the exchange is ~150 lines, PostgreSQL ignores
// the SCRAM user name and needs no channel binding here (no TLS yet), and
// the verifier format is PostgreSQL's own, which xdg-go/scram does not parse.
// The router offers SCRAM-SHA-256 only, not SCRAM-SHA-256-PLUS: clients
// over TLS then send the "y" flag (channel binding supported, not offered),
// which is accepted; channel_binding=require clients cannot log in.
// SASLprep is not applied: passwords are used as their UTF-8 bytes, which is
// what PostgreSQL does for every password SASLprep leaves unchanged (all
// ASCII passwords without control characters).

const scramIterations = 4096

// scramVerifier is a parsed "SCRAM-SHA-256$iter:salt$StoredKey:ServerKey".
type scramVerifier struct {
	iter      int
	salt      []byte
	storedKey []byte
	serverKey []byte
}

func parseSCRAMVerifier(s string) (*scramVerifier, error) {
	rest, ok := strings.CutPrefix(s, "SCRAM-SHA-256$")
	if !ok {
		return nil, errors.New("not a SCRAM-SHA-256 verifier")
	}
	params, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return nil, errors.New("SCRAM verifier: missing $ before the keys")
	}
	iterS, saltS, ok := strings.Cut(params, ":")
	if !ok {
		return nil, errors.New("SCRAM verifier: want iterations:salt")
	}
	storedS, serverS, ok := strings.Cut(keys, ":")
	if !ok {
		return nil, errors.New("SCRAM verifier: want StoredKey:ServerKey")
	}
	v := &scramVerifier{}
	var err error
	if v.iter, err = strconv.Atoi(iterS); err != nil || v.iter < 1 {
		return nil, fmt.Errorf("SCRAM verifier: bad iteration count %q", iterS)
	}
	if v.salt, err = base64.StdEncoding.DecodeString(saltS); err != nil {
		return nil, fmt.Errorf("SCRAM verifier: salt: %w", err)
	}
	if v.storedKey, err = base64.StdEncoding.DecodeString(storedS); err != nil || len(v.storedKey) != sha256.Size {
		return nil, errors.New("SCRAM verifier: bad StoredKey")
	}
	if v.serverKey, err = base64.StdEncoding.DecodeString(serverS); err != nil || len(v.serverKey) != sha256.Size {
		return nil, errors.New("SCRAM verifier: bad ServerKey")
	}
	return v, nil
}

// newSCRAMVerifier derives a verifier from a clear-text password.
func newSCRAMVerifier(password string, salt []byte, iter int) *scramVerifier {
	salted := saltedPassword(password, salt, iter)
	clientKey := hmacSHA256(salted, "Client Key")
	stored := sha256.Sum256(clientKey)
	return &scramVerifier{iter: iter, salt: salt, storedKey: stored[:], serverKey: hmacSHA256(salted, "Server Key")}
}

// SCRAMVerifier returns PostgreSQL's stored form of password
// ("SCRAM-SHA-256$4096:salt$StoredKey:ServerKey") with a random salt, for
// auth files.
func SCRAMVerifier(password string) string {
	salt := make([]byte, 16)
	rand.Read(salt)
	return newSCRAMVerifier(password, salt, scramIterations).String()
}

func (v *scramVerifier) String() string {
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", v.iter, b64(v.salt), b64(v.storedKey), b64(v.serverKey))
}

func saltedPassword(password string, salt []byte, iter int) []byte {
	k, err := pbkdf2.Key(sha256.New, password, salt, iter, sha256.Size)
	if err != nil {
		panic(err) // only for FIPS-forbidden parameters, which these are not
	}
	return k
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

func nonce() string {
	b := make([]byte, 18)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// scramKeys let the router answer a server's SCRAM challenge for a user
// whose password it never saw (pgbouncer's SCRAM pass-through). A client
// proves its password with ClientProof = ClientKey XOR HMAC(StoredKey,
// AuthMessage); the router, holding StoredKey, recovers ClientKey from a
// valid proof. ClientKey is all a SCRAM client derives from the password,
// so with the verifier's salt and iteration count it computes a valid
// proof for any server that stores the same verifier (same salt, same
// iterations, same StoredKey), and ServerKey checks that server's answer.
type scramKeys struct {
	v         *scramVerifier
	clientKey []byte
}

// scramServer is the server side of one exchange.
type scramServer struct {
	v               *scramVerifier
	clientFirstBare string
	serverFirst     string
	gs2Header       string
	nonce           string
	clientKey       []byte // recovered from a valid proof (see scramKeys)
}

// first handles client-first-message and returns server-first-message.
func (s *scramServer) first(msg []byte) (string, error) {
	m := string(msg)
	// gs2-header: "n,," or "y,," (no channel binding); "p=" is refused
	// because the router offers no SCRAM-SHA-256-PLUS.
	var cbflag string
	switch {
	case strings.HasPrefix(m, "n,"), strings.HasPrefix(m, "y,"):
		cbflag = m[:2]
	default:
		return "", errors.New("unsupported SCRAM channel binding flag")
	}
	rest := m[2:]
	authzid, bare, ok := strings.Cut(rest, ",")
	if !ok || (authzid != "" && !strings.HasPrefix(authzid, "a=")) {
		return "", errors.New("malformed SCRAM client-first-message")
	}
	s.gs2Header = cbflag + authzid + ","
	s.clientFirstBare = bare
	var cnonce string
	for _, attr := range strings.Split(bare, ",") {
		if v, ok := strings.CutPrefix(attr, "r="); ok {
			cnonce = v
		}
	}
	if cnonce == "" {
		return "", errors.New("SCRAM client-first-message has no nonce")
	}
	s.nonce = cnonce + nonce()
	s.serverFirst = fmt.Sprintf("r=%s,s=%s,i=%d", s.nonce, base64.StdEncoding.EncodeToString(s.v.salt), s.v.iter)
	return s.serverFirst, nil
}

// final checks client-final-message; ok reports whether the proof holds.
// On ok it returns server-final-message.
func (s *scramServer) final(msg []byte) (string, bool, error) {
	m := string(msg)
	idx := strings.LastIndex(m, ",p=")
	if idx < 0 {
		return "", false, errors.New("SCRAM client-final-message has no proof")
	}
	withoutProof := m[:idx]
	proof, err := base64.StdEncoding.DecodeString(m[idx+3:])
	if err != nil || len(proof) != sha256.Size {
		return "", false, errors.New("malformed SCRAM proof")
	}
	var cb, rnonce string
	for _, attr := range strings.Split(withoutProof, ",") {
		switch {
		case strings.HasPrefix(attr, "c="):
			cb = attr[2:]
		case strings.HasPrefix(attr, "r="):
			rnonce = attr[2:]
		}
	}
	if cb != base64.StdEncoding.EncodeToString([]byte(s.gs2Header)) {
		return "", false, errors.New("SCRAM channel binding does not match")
	}
	if rnonce != s.nonce {
		return "", false, errors.New("SCRAM nonce does not match")
	}
	authMsg := s.clientFirstBare + "," + s.serverFirst + "," + withoutProof
	sig := hmacSHA256(s.v.storedKey, authMsg)
	clientKey := make([]byte, sha256.Size)
	for i := range clientKey {
		clientKey[i] = proof[i] ^ sig[i]
	}
	got := sha256.Sum256(clientKey)
	if subtle.ConstantTimeCompare(got[:], s.v.storedKey) != 1 {
		return "", false, nil
	}
	s.clientKey = clientKey
	return "v=" + base64.StdEncoding.EncodeToString(hmacSHA256(s.v.serverKey, authMsg)), true, nil
}

// keys returns the pass-through keys of a successful exchange.
func (s *scramServer) keys() *scramKeys {
	if s.clientKey == nil {
		return nil
	}
	return &scramKeys{v: s.v, clientKey: s.clientKey}
}

// scramClient is the client side of one exchange (the router logging into
// PostgreSQL), from a password or from pass-through keys.
type scramClient struct {
	password        string
	keys            *scramKeys // instead of password
	clientNonce     string
	clientFirstBare string
	serverSig       []byte
}

func (c *scramClient) first() string {
	c.clientNonce = nonce()
	c.clientFirstBare = "n=,r=" + c.clientNonce
	return "n,," + c.clientFirstBare
}

func (c *scramClient) final(serverFirst []byte) (string, error) {
	sf := string(serverFirst)
	var rnonce, salt64 string
	iter := 0
	for _, attr := range strings.Split(sf, ",") {
		switch {
		case strings.HasPrefix(attr, "r="):
			rnonce = attr[2:]
		case strings.HasPrefix(attr, "s="):
			salt64 = attr[2:]
		case strings.HasPrefix(attr, "i="):
			iter, _ = strconv.Atoi(attr[2:])
		}
	}
	if !strings.HasPrefix(rnonce, c.clientNonce) || iter < 1 {
		return "", errors.New("malformed SCRAM server-first-message")
	}
	salt, err := base64.StdEncoding.DecodeString(salt64)
	if err != nil {
		return "", fmt.Errorf("SCRAM salt: %w", err)
	}
	clientKey, storedKey, serverKey, err := c.derive(salt, iter)
	if err != nil {
		return "", err
	}
	withoutProof := "c=biws,r=" + rnonce
	authMsg := c.clientFirstBare + "," + sf + "," + withoutProof
	sig := hmacSHA256(storedKey, authMsg)
	proof := make([]byte, len(clientKey))
	for i := range proof {
		proof[i] = clientKey[i] ^ sig[i]
	}
	c.serverSig = hmacSHA256(serverKey, authMsg)
	return withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof), nil
}

// derive returns ClientKey, StoredKey and ServerKey for the server's salt
// and iteration count: from the password, or from pass-through keys, which
// hold only for the salt and count of their verifier.
func (c *scramClient) derive(salt []byte, iter int) (clientKey, storedKey, serverKey []byte, err error) {
	if c.keys != nil {
		if iter != c.keys.v.iter || !bytes.Equal(salt, c.keys.v.salt) {
			return nil, nil, nil, errors.New("SCRAM pass-through: the server's verifier differs from the one the client logged in with (salt or iteration count); set ServerPasswords for this user")
		}
		return c.keys.clientKey, c.keys.v.storedKey, c.keys.v.serverKey, nil
	}
	salted := saltedPassword(c.password, salt, iter)
	clientKey = hmacSHA256(salted, "Client Key")
	stored := sha256.Sum256(clientKey)
	return clientKey, stored[:], hmacSHA256(salted, "Server Key"), nil
}

func (c *scramClient) verify(serverFinal []byte) error {
	v, ok := strings.CutPrefix(string(serverFinal), "v=")
	if !ok {
		return fmt.Errorf("SCRAM server-final-message: %q", serverFinal)
	}
	sig, err := base64.StdEncoding.DecodeString(v)
	if err != nil || !hmac.Equal(sig, c.serverSig) {
		return errors.New("SCRAM server signature does not match: the server does not know the password")
	}
	return nil
}

// md5Password is PostgreSQL's md5 response: "md5" + md5(md5(password+user) + salt),
// where inner is either the clear password (hashed here) or a stored
// "md5..." hash.
func md5Response(stored, user string, salt [4]byte) string {
	inner := stored
	if !isMD5Hash(stored) {
		inner = MD5Hash(user, stored)
	}
	sum := md5.Sum(append([]byte(inner[3:]), salt[:]...))
	return "md5" + hex.EncodeToString(sum[:])
}

// MD5Hash is PostgreSQL's stored md5 form of a password: "md5" + md5(password+user).
func MD5Hash(user, password string) string {
	sum := md5.Sum([]byte(password + user))
	return "md5" + hex.EncodeToString(sum[:])
}

func isMD5Hash(s string) bool {
	if len(s) != 35 || !strings.HasPrefix(s, "md5") {
		return false
	}
	_, err := hex.DecodeString(s[3:])
	return err == nil
}
