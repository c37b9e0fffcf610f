package postgres

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"
)

// StopMode is pg_ctl's shutdown mode.
type StopMode string

// Shutdown modes of pg_ctl stop -m.
const (
	StopSmart     StopMode = "smart"     // wait for every session to end
	StopFast      StopMode = "fast"      // roll back sessions, clean shutdown (the usual choice)
	StopImmediate StopMode = "immediate" // no shutdown checkpoint; crash recovery on next start
)

// stopSignal is the postmaster's signal for each mode (as pg_ctl sends it).
var stopSignal = map[StopMode]syscall.Signal{
	StopSmart:     syscall.SIGTERM,
	StopFast:      syscall.SIGINT,
	StopImmediate: syscall.SIGQUIT,
}

// Role is a database login role pgha manages. Password is the clear-text
// password from the agent's configuration; PostgreSQL stores it as a
// SCRAM-SHA-256 verifier (computed by pgha, the clear text never reaches the
// server for ASCII passwords).
type Role struct {
	Name     string
	Password string
}

// Config describes one local PostgreSQL instance. The zero values of the
// optional fields are replaced by defaults in New.
type Config struct {
	BinDir          string            // dir with pg_ctl, initdb, postgres, pg_controldata
	DataDir         string            // made absolute by New
	ListenAddresses string            // listen_addresses; default "localhost"
	Port            int               // required
	SocketDir       string            // unix_socket_directories; the agent connects through it; required
	Superuser       string            // default "postgres"; initdb -U
	Replication     Role              // LOGIN REPLICATION; skipped when Name is empty
	Monitor         Role              // LOGIN, member of pg_monitor; skipped when Name is empty
	Rewind          Role              // LOGIN with the function grants pg_rewind needs; skipped when Name is empty
	Parameters      map[string]string // extra settings, written last into pgha.conf
	HBA             []string          // extra pg_hba lines placed at the end of the managed block
	AllowedNetworks []string          // CIDRs (or samehost/samenet) allowed for the pgha roles over scram-sha-256
	RunAs           string            // OS user for PostgreSQL commands when the process is root
	Logger          *slog.Logger      // default: discard

	// Additions to the contract (all optional).

	// LogFile is pg_ctl's -l server log. Default: "<DataDir>.log", a
	// sibling of the data dir, so that pg_basebackup and pg_rewind never copy
	// or overwrite it. Set logging_collector=on in Parameters to rotate logs
	// inside the data dir instead; this file then only holds startup output.
	LogFile string
	// StartTimeout bounds pg_ctl start -w and pg_ctl promote -w (default 5m;
	// crash recovery of a big instance can be slow).
	StartTimeout time.Duration
	// StopTimeout bounds how long Stop waits for the server to go (default 5m).
	StopTimeout time.Duration
	// InitdbArgs are extra initdb arguments, e.g. "--locale=C.UTF-8".
	InitdbArgs []string
	// Archive is the WAL archive at first (SetArchive replaces it).
	Archive Archive
}

// identRe is what pgha accepts as a role or OS user name: it is written
// unquoted into pg_hba.conf and pg_ident.conf.
var identRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]{0,62}$`)

// paramRe is a configuration parameter name (custom ones contain a dot).
var paramRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)

// reservedParams are derived by pgha from other Config fields or from the
// standby description; Parameters may not set them.
var reservedParams = map[string]string{
	"listen_addresses":          "ListenAddresses",
	"port":                      "Port",
	"unix_socket_directories":   "SocketDir",
	"primary_conninfo":          "the standby description",
	"primary_slot_name":         "the standby description",
	"recovery_target_timeline":  "the standby description",
	"synchronous_standby_names": "the sync argument of Configure",
	"data_directory":            "DataDir",
	"config_file":               "DataDir",
	"hba_file":                  "DataDir",
	"ident_file":                "DataDir",
	"archive_mode":              "the archive settings (archive.archive_mode)",
	"archive_command":           "the archive settings (archive.archive_command)",
	"restore_command":           "the archive settings (archive.restore_command)",
	"include":                   "",
	"include_if_exists":         "",
	"include_dir":               "",
}

// withDefaults returns cfg with defaults filled in and paths made absolute,
// or an error naming the first invalid field.
func (cfg Config) withDefaults() (Config, error) {
	var err error
	if cfg.BinDir == "" {
		return cfg, errors.New("postgres config: BinDir is required (the directory holding pg_ctl and initdb, e.g. /usr/lib/postgresql/15/bin)")
	}
	for _, prog := range []string{"pg_ctl", "initdb", "postgres", "pg_controldata"} {
		if _, err := os.Stat(filepath.Join(cfg.BinDir, prog)); err != nil {
			return cfg, fmt.Errorf("postgres config: BinDir %q has no %s: %w", cfg.BinDir, prog, err)
		}
	}
	if cfg.DataDir == "" {
		return cfg, errors.New("postgres config: DataDir is required")
	}
	if cfg.DataDir, err = filepath.Abs(cfg.DataDir); err != nil {
		return cfg, fmt.Errorf("postgres config: DataDir: %w", err)
	}
	if cfg.ListenAddresses == "" {
		cfg.ListenAddresses = "localhost"
	}
	if strings.ContainsAny(cfg.ListenAddresses, "'\n") {
		return cfg, fmt.Errorf("postgres config: ListenAddresses %q contains a quote or newline", cfg.ListenAddresses)
	}
	if cfg.Port < 1 || cfg.Port > 65535 {
		return cfg, fmt.Errorf("postgres config: Port %d is not a TCP port (1-65535)", cfg.Port)
	}
	if cfg.SocketDir == "" {
		return cfg, errors.New("postgres config: SocketDir is required (unix_socket_directories; the agent connects through it)")
	}
	if cfg.SocketDir, err = filepath.Abs(cfg.SocketDir); err != nil {
		return cfg, fmt.Errorf("postgres config: SocketDir: %w", err)
	}
	if strings.ContainsAny(cfg.SocketDir, "',\n") {
		return cfg, fmt.Errorf("postgres config: SocketDir %q contains a quote, comma or newline", cfg.SocketDir)
	}
	// sun_path is 108 bytes including the terminating NUL.
	if sock := filepath.Join(cfg.SocketDir, fmt.Sprintf(".s.PGSQL.%d", cfg.Port)); len(sock) > 107 {
		return cfg, fmt.Errorf("postgres config: SocketDir %q is too long: the socket path %s exceeds 107 bytes", cfg.SocketDir, sock)
	}
	if cfg.Superuser == "" {
		cfg.Superuser = "postgres"
	}
	if !identRe.MatchString(cfg.Superuser) {
		return cfg, fmt.Errorf("postgres config: Superuser %q is not a plain role name", cfg.Superuser)
	}
	seen := map[string]string{cfg.Superuser: "Superuser"}
	for _, r := range []struct {
		field string
		role  Role
	}{{"Replication", cfg.Replication}, {"Monitor", cfg.Monitor}, {"Rewind", cfg.Rewind}} {
		if r.role.Name == "" {
			if r.role.Password != "" {
				return cfg, fmt.Errorf("postgres config: %s.Password is set but %s.Name is empty", r.field, r.field)
			}
			continue
		}
		if !identRe.MatchString(r.role.Name) {
			return cfg, fmt.Errorf("postgres config: %s.Name %q is not a plain role name", r.field, r.role.Name)
		}
		if other, dup := seen[r.role.Name]; dup {
			return cfg, fmt.Errorf("postgres config: %s.Name %q is the same role as %s; use a separate role", r.field, r.role.Name, other)
		}
		seen[r.role.Name] = r.field
		if r.role.Password == "" {
			return cfg, fmt.Errorf("postgres config: %s.Password is required for role %q", r.field, r.role.Name)
		}
	}
	if err := ValidateParameters(cfg.Parameters); err != nil {
		return cfg, fmt.Errorf("postgres config: Parameters: %w", err)
	}
	if err := ValidateHBA(cfg.HBA); err != nil {
		return cfg, fmt.Errorf("postgres config: HBA%w", err)
	}
	if err := cfg.Archive.Validate(); err != nil {
		return cfg, fmt.Errorf("postgres config: Archive: %w", err)
	}
	for i, n := range cfg.AllowedNetworks {
		if err := ValidateAllowedNetwork(n); err != nil {
			return cfg, fmt.Errorf("postgres config: AllowedNetworks[%d]: %w", i, err)
		}
	}
	if os.Geteuid() == 0 {
		if cfg.RunAs == "" {
			return cfg, errors.New("postgres config: RunAs is required when running as root (PostgreSQL refuses to run as root); e.g. \"postgres\"")
		}
		if _, err := lookupCredential(cfg.RunAs); err != nil {
			return cfg, fmt.Errorf("postgres config: RunAs: %w", err)
		}
	}
	if cfg.LogFile == "" {
		cfg.LogFile = cfg.DataDir + ".log"
	}
	if cfg.LogFile, err = filepath.Abs(cfg.LogFile); err != nil {
		return cfg, fmt.Errorf("postgres config: LogFile: %w", err)
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 5 * time.Minute
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 5 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg, nil
}

// ValidateParameters checks PostgreSQL settings an operator asks for (in a
// node's file or the cluster-wide configuration): a parameter name, not one
// pgha manages itself, one line. The first bad key in name order is named.
func ValidateParameters(params map[string]string) error {
	keys := slices.Sorted(maps.Keys(params))
	for _, k := range keys {
		v := params[k]
		if !paramRe.MatchString(k) {
			return fmt.Errorf("%q is not a parameter name", k)
		}
		if owner, ok := reservedParams[strings.ToLower(k)]; ok {
			if owner == "" {
				return fmt.Errorf("%q is set by pgha and may not be changed", k)
			}
			return fmt.Errorf("%q is set by pgha from %s", k, owner)
		}
		if strings.ContainsAny(v, "\n\r\x00") {
			return fmt.Errorf("%q: the value contains a newline", k)
		}
	}
	return nil
}

// ValidateAllowedNetwork checks one address a pg_hba.conf line of pgha's
// roles may name: a CIDR, or PostgreSQL's samehost or samenet. The agent's
// configuration uses it too, so the two never disagree.
func ValidateAllowedNetwork(n string) error {
	if n == "samehost" || n == "samenet" {
		return nil
	}
	if _, _, err := net.ParseCIDR(n); err != nil {
		return fmt.Errorf("%q is not a CIDR such as 10.0.0.0/24, nor samehost or samenet", n)
	}
	return nil
}

// ValidateHBA checks an operator's pg_hba.conf lines: one line each, a
// connection type PostgreSQL knows, enough fields, and an authentication
// method it knows where the method goes. A line PostgreSQL rejects keeps
// the old rules in force at a reload but stops the server from starting,
// so the obvious mistakes are refused here, before any server sees them.
func ValidateHBA(lines []string) error {
	for i, l := range lines {
		if strings.ContainsAny(l, "\n\r\x00") || strings.TrimSpace(l) == "" {
			return fmt.Errorf("[%d] %q must be one non-empty line", i, l)
		}
		f := strings.Fields(l)
		if strings.HasPrefix(f[0], "#") {
			continue
		}
		method := 3 // local DATABASE USER METHOD
		switch f[0] {
		case "local":
		case "host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc":
			method = 4 // host DATABASE USER ADDRESS METHOD
			if len(f) > 5 && strings.Count(f[3], "/") == 0 && net.ParseIP(f[3]) != nil && net.ParseIP(f[4]) != nil {
				method = 5 // ADDRESS MASK
			}
		default:
			return fmt.Errorf("[%d] %q: %q is not a connection type (local, host, hostssl, hostnossl, hostgssenc, hostnogssenc)", i, l, f[0])
		}
		if len(f) <= method {
			return fmt.Errorf("[%d] %q: too few fields", i, l)
		}
		if !hbaMethods[f[method]] {
			return fmt.Errorf("[%d] %q: %q is not an authentication method", i, l, f[method])
		}
	}
	return nil
}

var hbaMethods = map[string]bool{"trust": true, "reject": true, "scram-sha-256": true, "md5": true, "password": true,
	"gss": true, "sspi": true, "ident": true, "peer": true, "ldap": true, "radius": true, "cert": true, "pam": true, "bsd": true}
