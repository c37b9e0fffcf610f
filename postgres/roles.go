package postgres

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// slotRe is what PostgreSQL accepts as a replication slot name.
var slotRe = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// SlotPrefix marks the physical slots pgha owns; EnsureSlots drops only
// those.
const SlotPrefix = "pgha_"

const scramIterations = 4096

// scramVerifier computes PostgreSQL's stored SCRAM-SHA-256 secret for
// password with salt. It is only valid for passwords that SASLprep leaves
// unchanged (printable ASCII); see plainASCII.
func scramVerifier(password string, salt []byte, iter int) (string, error) {
	salted, err := pbkdf2.Key(sha256.New, password, salt, iter, sha256.Size)
	if err != nil {
		return "", err
	}
	mac := func(key []byte, msg string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	stored := sha256.Sum256(mac(salted, "Client Key"))
	server := mac(salted, "Server Key")
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iter, b64(salt), b64(stored[:]), b64(server)), nil
}

// plainASCII: SASLprep is the identity on printable ASCII.
func plainASCII(s string) bool {
	for k := 0; k < len(s); k++ {
		if s[k] < 0x20 || s[k] > 0x7e {
			return false
		}
	}
	return true
}

// verifierMatches reports whether the stored secret is a SCRAM-SHA-256
// verifier of password.
func verifierMatches(stored, password string) bool {
	rest, ok := strings.CutPrefix(stored, "SCRAM-SHA-256$")
	if !ok || !plainASCII(password) {
		return false
	}
	iterSalt, _, ok := strings.Cut(rest, "$")
	if !ok {
		return false
	}
	iterS, saltS, ok := strings.Cut(iterSalt, ":")
	if !ok {
		return false
	}
	iter, err := strconv.Atoi(iterS)
	if err != nil || iter < 1 {
		return false
	}
	salt, err := base64.StdEncoding.DecodeString(saltS)
	if err != nil {
		return false
	}
	want, err := scramVerifier(password, salt, iter)
	return err == nil && subtle.ConstantTimeCompare([]byte(want), []byte(stored)) == 1
}

// passwordClause returns the PASSWORD clause for role r: a SCRAM verifier
// computed here (the clear text never reaches the server or its logs), or,
// for passwords SASLprep might change, the clear text for the server to
// hash with password_encryption = scram-sha-256.
func passwordClause(password string) (string, error) {
	if !plainASCII(password) {
		return "PASSWORD " + quoteLiteral(password), nil
	}
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	v, err := scramVerifier(password, salt, scramIterations)
	if err != nil {
		return "", err
	}
	return "PASSWORD " + quoteLiteral(v), nil
}

func checkPrimary(ctx context.Context, c *pgx.Conn) error {
	var inRecovery bool
	if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return err
	}
	if inRecovery {
		return errors.New("the server is in recovery (a standby); run this on the primary")
	}
	return nil
}

// EnsureRoles creates or updates the Replication, Monitor and Rewind roles
// (those with a name): LOGIN, their password as SCRAM-SHA-256, and their
// privileges — REPLICATION; membership of pg_monitor; EXECUTE on the
// functions pg_rewind uses (pg_ls_dir, pg_stat_file, pg_read_binary_file).
// It is idempotent and leaves a role's password alone when it already
// matches. Only on a primary.
func (i *Instance) EnsureRoles(ctx context.Context) error {
	err := i.with(ctx, &i.conn, func(c *pgx.Conn) error {
		if err := checkPrimary(ctx, c); err != nil {
			return err
		}
		type spec struct {
			role   Role
			attrs  string
			grants []string
		}
		var specs []spec
		if r := i.cfg.Replication; r.Name != "" {
			specs = append(specs, spec{r, "LOGIN REPLICATION", nil})
		}
		if r := i.cfg.Monitor; r.Name != "" {
			specs = append(specs, spec{r, "LOGIN", []string{"GRANT pg_monitor TO " + quoteIdent(r.Name)}})
		}
		if r := i.cfg.Rewind; r.Name != "" {
			q := quoteIdent(r.Name)
			specs = append(specs, spec{r, "LOGIN", []string{
				"GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO " + q,
				"GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO " + q,
				"GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO " + q,
				"GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO " + q,
				// A rejoining node makes a just-promoted source checkpoint
				// first, or pg_rewind reads its old timeline from pg_control
				// and wrongly answers "no rewind required".
				"GRANT pg_checkpoint TO " + q,
			}})
		}
		for _, s := range specs {
			if err := i.ensureRole(ctx, c, s.role, s.attrs, s.grants); err != nil {
				return fmt.Errorf("role %s: %w", s.role.Name, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ensure roles: %w", err)
	}
	return nil
}

func (i *Instance) ensureRole(ctx context.Context, c *pgx.Conn, r Role, attrs string, grants []string) error {
	tx, err := c.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	// Keep passwords out of the server log whatever the operator's logging.
	for _, s := range []string{
		"SET LOCAL log_statement = 'none'",
		"SET LOCAL log_min_duration_statement = -1",
		// A failing CREATE/ALTER ROLE is logged with its text at ERROR by default.
		"SET LOCAL log_min_error_statement = 'panic'",
		"SET LOCAL password_encryption = 'scram-sha-256'",
	} {
		if _, err := tx.Exec(ctx, s); err != nil {
			return err
		}
	}
	var stored *string
	err = tx.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", r.Name).Scan(&stored)
	exists := err == nil
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return err
	}
	q := quoteIdent(r.Name)
	var stmt string
	switch {
	case !exists:
		pw, err := passwordClause(r.Password)
		if err != nil {
			return err
		}
		stmt = fmt.Sprintf("CREATE ROLE %s %s %s", q, attrs, pw)
		i.log.Info("creating role", "role", r.Name)
	case stored != nil && verifierMatches(*stored, r.Password):
		stmt = fmt.Sprintf("ALTER ROLE %s %s", q, attrs)
	default:
		pw, err := passwordClause(r.Password)
		if err != nil {
			return err
		}
		stmt = fmt.Sprintf("ALTER ROLE %s %s %s", q, attrs, pw)
		i.log.Info("setting role password", "role", r.Name)
	}
	if _, err := tx.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("%s: %w", strings.SplitN(stmt, " PASSWORD ", 2)[0], err)
	}
	for _, g := range grants {
		if _, err := tx.Exec(ctx, g); err != nil {
			return fmt.Errorf("%s: %w", g, err)
		}
	}
	return tx.Commit(ctx)
}

// EnsureSlots makes the physical replication slots match want: it creates
// the missing ones (reserving WAL at once) and drops inactive slots whose
// name starts with "pgha_" that are not in want. Active unwanted slots are
// left for a later call (their standby is still connected). Slots without
// the prefix are never touched. Only on a primary.
func (i *Instance) EnsureSlots(ctx context.Context, want []string) error {
	wanted := map[string]bool{}
	for _, n := range want {
		if !slotRe.MatchString(n) {
			return fmt.Errorf("ensure slots: %q is not a slot name (lower-case letters, digits, underscore; at most 63)", n)
		}
		wanted[n] = true
	}
	err := i.with(ctx, &i.conn, func(c *pgx.Conn) error {
		if err := checkPrimary(ctx, c); err != nil {
			return err
		}
		rows, err := c.Query(ctx, "SELECT slot_name, slot_type, active FROM pg_replication_slots")
		if err != nil {
			return err
		}
		type row struct {
			name, typ string
			active    bool
		}
		have, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
			var x row
			err := r.Scan(&x.name, &x.typ, &x.active)
			return x, err
		})
		if err != nil {
			return err
		}
		exists := map[string]bool{}
		for _, s := range have {
			exists[s.name] = true
			if wanted[s.name] || !strings.HasPrefix(s.name, SlotPrefix) || s.typ != "physical" || s.active {
				continue
			}
			i.log.Info("dropping replication slot", "slot", s.name)
			if _, err := c.Exec(ctx, "SELECT pg_drop_replication_slot($1)", s.name); err != nil {
				return fmt.Errorf("drop slot %s: %w", s.name, err)
			}
		}
		for _, n := range want {
			if exists[n] {
				continue
			}
			i.log.Info("creating replication slot", "slot", n)
			if _, err := c.Exec(ctx, "SELECT pg_create_physical_replication_slot($1, true)", n); err != nil {
				return fmt.Errorf("create slot %s: %w", n, err)
			}
			exists[n] = true
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ensure slots: %w", err)
	}
	return nil
}
