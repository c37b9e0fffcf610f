package router

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// This file holds where the router gets secrets from besides Config.Users
// (auth_query), and with what it logs into PostgreSQL as a user whose
// password it does not have (pass-through).

// DefaultAuthQuery is Config.AuthQuery when AuthUser is set and AuthQuery
// is not (pgbouncer's default auth_query).
const DefaultAuthQuery = "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1"

// serverCred is what the router can log into PostgreSQL with as one user.
type serverCred struct {
	password string     // clear text, or an md5 hash (answers md5 challenges only)
	scram    *scramKeys // SCRAM pass-through: keys proved by a client's login
}

// learnedSecrets holds, per user, what clients' successful logins taught
// the router for logging into PostgreSQL: the md5 hash they proved
// knowledge of, or the SCRAM ClientKey recovered from their proof. Either
// is as good as the password against this cluster, so it lives in memory
// only. Any client goroutine may call its methods.
type learnedSecrets struct {
	mu    sync.Mutex
	md5   map[string]string
	scram map[string]*scramKeys
}

func (l *learnedSecrets) setMD5(user, hash string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.md5 == nil {
		l.md5 = map[string]string{}
	}
	l.md5[user] = hash
}

func (l *learnedSecrets) setSCRAM(user string, k *scramKeys) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.scram == nil {
		l.scram = map[string]*scramKeys{}
	}
	l.scram[user] = k
}

func (l *learnedSecrets) get(user string) (string, *scramKeys) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.md5[user], l.scram[user]
}

// serverCredential is what the router logs into PostgreSQL with as user,
// in this order: Config.ServerPasswords; a Users entry that is not a SCRAM
// verifier (clear text, or an md5 hash); what a client's login taught it.
func (r *Router) serverCredential(user string) serverCred {
	if p, ok := r.cfg.ServerPasswords[user]; ok {
		return serverCred{password: p}
	}
	if p, ok := r.cfg.Users[user]; ok && !strings.HasPrefix(p, "SCRAM-SHA-256$") {
		return serverCred{password: p}
	}
	md5, keys := r.learned.get(user)
	return serverCred{password: md5, scram: keys}
}

// secretOf is the stored secret user authenticates against: Config.Users,
// else (with AuthUser) the cluster's own, through AuthQuery. known is
// false for a user neither has; an empty secret is no secret (PostgreSQL
// never accepts an empty password either).
func (r *Router) secretOf(db, user string) (secret string, known bool, err error) {
	if s, ok := r.cfg.Users[user]; ok {
		return s, s != "", nil
	}
	if r.cfg.AuthUser == "" {
		return "", false, nil
	}
	return r.lookupSecret(db, user)
}

// lookupSecret runs AuthQuery for user on the primary, or on a standby
// when there is no primary (the catalog is replicated, and logins should
// not fail during a failover), through the AuthUser pool.
func (r *Router) lookupSecret(db, user string) (string, bool, error) {
	v := r.view.Load()
	b, ok := v.primaryBackend()
	if !ok {
		b, ok = v.pickStandby(0, 0)
	}
	if !ok {
		return "", false, &authError{code: "57P03", msg: "no backend available to look up the password (auth_query): the cluster has no healthy primary or standby"}
	}
	if r.cfg.AuthDatabase != "" {
		db = r.cfg.AuthDatabase
	}
	p := r.pool(b.Addr(), db, r.cfg.AuthUser)
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.ServerConnectTimeout)
	defer cancel()
	sc, err := p.acquire(ctx)
	if err != nil {
		return "", false, fmt.Errorf("auth_query on %s as %s: %w", b.Name, r.cfg.AuthUser, err)
	}
	secret, found, err := sc.querySecret(r.cfg.AuthQuery, user, time.Now().Add(r.cfg.ServerConnectTimeout))
	p.release(sc, !sc.broken.Load())
	if err != nil {
		return "", false, fmt.Errorf("auth_query on %s as %s: %w", b.Name, r.cfg.AuthUser, err)
	}
	return secret, found, nil
}

// querySecret runs query with user as its text parameter $1 (extended
// protocol: the name is never spliced into SQL) and returns the second
// column of the first row. found is false for no row or a NULL. The
// connection must be at ReadyForQuery 'I'; it is again afterwards unless
// sc.broken.
func (sc *serverConn) querySecret(query, user string, deadline time.Time) (secret string, found bool, err error) {
	sc.conn.SetDeadline(deadline)
	defer sc.conn.SetDeadline(time.Time{})
	sc.send(&pgproto3.Parse{Query: query})
	sc.send(&pgproto3.Bind{Parameters: [][]byte{[]byte(user)}})
	sc.send(&pgproto3.Execute{})
	sc.send(&pgproto3.Sync{})
	if err := sc.flush(); err != nil {
		return "", false, err
	}
	var qerr error
	rows := 0
	for {
		msg, err := sc.receive()
		if err != nil {
			return "", false, err
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			rows++
			if rows > 1 {
				continue
			}
			if len(m.Values) != 2 {
				qerr = fmt.Errorf("auth_query returned %d columns, want 2 (name, secret)", len(m.Values))
				continue
			}
			if len(m.Values[1]) > 0 { // NULL or empty: no password
				secret, found = string(m.Values[1]), true
			}
		case *pgproto3.ErrorResponse:
			qerr = &serverError{resp: copyError(m)}
		case *pgproto3.ReadyForQuery:
			if m.TxStatus != 'I' {
				sc.broken.Store(true)
			}
			if qerr != nil {
				return "", false, qerr
			}
			return secret, found, nil
		}
	}
}
