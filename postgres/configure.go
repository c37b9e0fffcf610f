package postgres

import (
	"bufio"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Standby describes the upstream a standby streams from.
type Standby struct {
	PrimaryHost     string
	PrimaryPort     int
	User            string // replication role
	PassFile        string // libpq password file holding the replication password (mode 0600, readable by RunAs; see WritePassFile)
	SlotName        string
	ApplicationName string // the member name; what synchronous_standby_names refers to
}

// ConfigChange says what Configure changed and what a running server needs
// for the change to take effect.
type ConfigChange struct {
	// Changed: some file was rewritten (or standby.signal created/removed);
	// a running server needs at least Reload.
	Changed bool
	// NeedsRestart: a running server must be restarted (a setting of
	// postmaster context changed, or standby.signal appeared/disappeared).
	// This is predicted from a static list; after Reload, PendingRestart
	// gives PostgreSQL's own answer (e.g. for operator Parameters).
	NeedsRestart bool
	// What lists what changed: setting names, "standby.signal",
	// "pg_hba.conf", "pg_ident.conf", "postgresql.conf".
	What []string
}

// Names of the files pgha manages inside the data dir.
const (
	PghaConfFile  = "pgha.conf"
	standbySignal = "standby.signal"
	beginMarker   = "# BEGIN pgha"
	endMarker     = "# END pgha"
	identMap      = "pgha"
)

// restartParams are settings of postmaster context (PostgreSQL 15) that pgha
// writes or operators commonly set.
var restartParams = map[string]bool{
	"listen_addresses": true, "port": true, "unix_socket_directories": true,
	"wal_level": true, "hot_standby": true, "max_wal_senders": true, "max_replication_slots": true,
	"wal_log_hints": true, "recovery_target_timeline": true,
	"shared_buffers": true, "max_connections": true, "shared_preload_libraries": true,
	"max_worker_processes": true, "max_prepared_transactions": true, "max_locks_per_transaction": true,
	"max_pred_locks_per_transaction": true, "huge_pages": true, "wal_buffers": true, "archive_mode": true,
	"track_commit_timestamp": true, "logging_collector": true, "superuser_reserved_connections": true,
	"max_files_per_process": true, "shared_memory_type": true, "dynamic_shared_memory_type": true,
	"max_logical_replication_workers": true, "autovacuum_max_workers": true, "data_sync_retry": true,
	"cluster_name": true, "min_dynamic_shared_memory": true, "huge_page_size": true,
	"recovery_target": true, "recovery_target_lsn": true, "recovery_target_name": true,
	"recovery_target_time": true, "recovery_target_xid": true, "recovery_target_inclusive": true,
	"recovery_target_action": true, "bonjour": true, "bonjour_name": true, "event_source": true,
}

// setting is one line of pgha.conf.
type setting struct{ name, value string }

// SyncStandbyNames formats a quorum synchronous_standby_names value:
// ANY num ("a","b"). No names gives "" (asynchronous).
func SyncStandbyNames(num int, names []string) string {
	if len(names) == 0 {
		return ""
	}
	q := make([]string, len(names))
	for k, n := range names {
		q[k] = `"` + strings.ReplaceAll(n, `"`, `""`) + `"`
	}
	return fmt.Sprintf("ANY %d (%s)", num, strings.Join(q, ","))
}

// primaryConninfo builds the standby's primary_conninfo.
func primaryConninfo(s *Standby) string {
	parts := []string{
		"host=" + quoteConnValue(s.PrimaryHost),
		"port=" + strconv.Itoa(s.PrimaryPort),
		"user=" + quoteConnValue(s.User),
	}
	if s.PassFile != "" {
		parts = append(parts, "passfile="+quoteConnValue(s.PassFile))
	}
	if s.ApplicationName != "" {
		parts = append(parts, "application_name="+quoteConnValue(s.ApplicationName))
	}
	parts = append(parts, "connect_timeout=2", "sslmode=prefer")
	return strings.Join(parts, " ")
}

func validateStandby(s *Standby) error {
	switch {
	case s.PrimaryHost == "":
		return errors.New("standby: PrimaryHost is required")
	case s.PrimaryPort < 1 || s.PrimaryPort > 65535:
		return fmt.Errorf("standby: PrimaryPort %d is not a TCP port", s.PrimaryPort)
	case s.User == "":
		return errors.New("standby: User (the replication role) is required")
	case s.SlotName != "" && !slotRe.MatchString(s.SlotName):
		return fmt.Errorf("standby: SlotName %q is not a slot name (lower-case letters, digits, underscore; at most 63)", s.SlotName)
	case s.PassFile != "" && !filepath.IsAbs(s.PassFile):
		return fmt.Errorf("standby: PassFile %q must be an absolute path", s.PassFile)
	}
	return nil
}

// pghaSettings lists, in order, what pgha.conf holds.
func (i *Instance) pghaSettings(standby *Standby, sync []string) []setting {
	c := i.cfg
	s := []setting{
		{"listen_addresses", c.ListenAddresses},
		{"port", strconv.Itoa(c.Port)},
		{"unix_socket_directories", c.SocketDir},
		{"wal_level", "replica"},
		{"hot_standby", "on"},
		{"max_wal_senders", "10"},
		{"max_replication_slots", "10"},
		{"wal_keep_size", "128MB"},
		{"wal_log_hints", "on"},
		{"hot_standby_feedback", "on"},
		{"password_encryption", "scram-sha-256"},
		// A standby whose upstream just changed (failover) retries the new
		// primary four times a second, not every five seconds. A promote
		// request that reaches the startup process as it begins this wait
		// would be acted on only when the wait ends; Promote wakes it. A
		// retry against a dead primary is one refused connect.
		{"wal_retrieve_retry_interval", "250ms"},
	}
	// A primary gets empty upstream settings (overriding any operator line)
	// and the same recovery_target_timeline (a restart-only setting), so that
	// the step from standby to primary after Promote only needs a reload.
	if standby != nil {
		s = append(s,
			setting{"primary_conninfo", primaryConninfo(standby)},
			setting{"primary_slot_name", standby.SlotName})
	} else {
		s = append(s, setting{"primary_conninfo", ""}, setting{"primary_slot_name", ""})
	}
	s = append(s, setting{"recovery_target_timeline", "latest"})
	s = append(s, setting{"synchronous_standby_names", SyncStandbyNames(1, sync)})
	s = append(s, i.archiveSettings().settings()...)
	params := i.parameters()
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if j := slices.IndexFunc(s, func(x setting) bool { return x.name == strings.ToLower(k) }); j >= 0 {
			s[j].value = params[k] // the operator overrides a pgha default
			continue
		}
		s = append(s, setting{k, params[k]})
	}
	return s
}

func renderPghaConf(settings []setting) string {
	var b strings.Builder
	b.WriteString("# Written by pgha-agent; every change here is overwritten.\n")
	b.WriteString("# Set extra parameters in the agent's configuration instead.\n")
	for _, s := range settings {
		fmt.Fprintf(&b, "%s = '%s'\n", s.name, strings.ReplaceAll(s.value, "'", "''"))
	}
	return b.String()
}

var confLineRe = regexp.MustCompile(`^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=?\s*'((?:[^']|'')*)'\s*$`)

// parsePghaConf reads back what renderPghaConf wrote.
func parsePghaConf(content string) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(content))
	for sc.Scan() {
		if sm := confLineRe.FindStringSubmatch(sc.Text()); sm != nil {
			m[sm[1]] = strings.ReplaceAll(sm[2], "''", "'")
		}
	}
	return m
}

var includeRe = regexp.MustCompile(`(?m)^\s*include_if_exists\s*=?\s*'pgha\.conf'`)

// ensureInclude appends the include of pgha.conf to postgresql.conf content
// unless it is there; operator lines are never changed.
func ensureInclude(content string) (string, bool) {
	if includeRe.MatchString(content) {
		return content, false
	}
	if content != "" && !strings.HasSuffix(content, "\n") {
		content += "\n"
	}
	return content + "\n# Added by pgha-agent: the settings pgha manages (keep this the last line).\ninclude_if_exists = 'pgha.conf'\n", true
}

// replaceManagedBlock puts block between "# BEGIN pgha" and "# END pgha"
// lines at the top of content, removing any previous managed block wherever
// it was, and keeps every other line as it was.
func replaceManagedBlock(content string, block []string) (string, error) {
	lines := strings.SplitAfter(content, "\n")
	if len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	var rest []string
	in := false
	for n, l := range lines {
		t := strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(t, beginMarker):
			if in {
				return "", fmt.Errorf("line %d: %q inside a managed block that is not closed", n+1, beginMarker)
			}
			in = true
		case strings.HasPrefix(t, endMarker):
			if !in {
				return "", fmt.Errorf("line %d: %q without %q", n+1, endMarker, beginMarker)
			}
			in = false
		case !in:
			rest = append(rest, l)
		}
	}
	if in {
		return "", fmt.Errorf("%q without %q; fix the file by hand", beginMarker, endMarker)
	}
	var b strings.Builder
	b.WriteString(beginMarker + " (managed by pgha-agent; edits inside this block are overwritten)\n")
	for _, l := range block {
		b.WriteString(l + "\n")
	}
	b.WriteString(endMarker + "\n")
	for _, l := range rest {
		b.WriteString(l)
	}
	if len(rest) > 0 && !strings.HasSuffix(rest[len(rest)-1], "\n") {
		b.WriteString("\n")
	}
	return b.String(), nil
}

// hbaBlock is the managed part of pg_hba.conf.
func (i *Instance) hbaBlock() []string {
	c := i.cfg
	lines := []string{
		fmt.Sprintf("local all %s peer map=%s", c.Superuser, identMap),
		// "all" does not match replication connections: StandbyWALEnd
		// asks the local standby IDENTIFY_SYSTEM over one.
		fmt.Sprintf("local replication %s peer map=%s", c.Superuser, identMap),
	}
	for _, n := range c.AllowedNetworks {
		if c.Replication.Name != "" {
			lines = append(lines, fmt.Sprintf("host replication %s %s scram-sha-256", c.Replication.Name, n))
		}
		if c.Monitor.Name != "" {
			lines = append(lines, fmt.Sprintf("host all %s %s scram-sha-256", c.Monitor.Name, n))
		}
		if c.Rewind.Name != "" {
			lines = append(lines, fmt.Sprintf("host all %s %s scram-sha-256", c.Rewind.Name, n))
		}
	}
	return append(lines, i.hbaLines()...)
}

// identBlock is the managed part of pg_ident.conf: the OS users allowed to
// connect as the superuser over the socket (peer authentication).
func (i *Instance) identBlock() []string {
	osUsers := []string{i.cfg.Superuser}
	if i.cfg.RunAs != "" {
		osUsers = append(osUsers, i.cfg.RunAs)
	}
	if u, err := user.Current(); err == nil {
		osUsers = append(osUsers, u.Username)
	}
	var lines []string
	seen := map[string]bool{}
	for _, u := range osUsers {
		if seen[u] {
			continue
		}
		seen[u] = true
		if !identRe.MatchString(u) {
			u = `"` + strings.ReplaceAll(u, `"`, `""`) + `"`
		}
		lines = append(lines, fmt.Sprintf("%s %s %s", identMap, u, i.cfg.Superuser))
	}
	return lines
}

// Configure writes the configuration pgha owns into the data directory:
//
//   - <DataDir>/pgha.conf holds every setting pgha manages (see pghaSettings),
//     then Parameters; it is rewritten atomically when its content changes.
//   - postgresql.conf gets "include_if_exists = 'pgha.conf'" appended once;
//     the operator's lines are never rewritten.
//   - pg_hba.conf and pg_ident.conf get a managed block between "# BEGIN pgha"
//     and "# END pgha" at the top; the operator's lines below stay as they are.
//   - standby.signal exists iff standby != nil.
//
// sync lists the members for synchronous_standby_names as ANY 1 (...); empty
// means asynchronous (”). Configure does not signal the server; the returned
// ConfigChange says whether a Reload or a Restart is needed.
func (i *Instance) Configure(standby *Standby, sync []string) (ConfigChange, error) {
	var ch ConfigChange
	dir := i.cfg.DataDir
	fail := func(err error) (ConfigChange, error) {
		return ch, fmt.Errorf("configure postgres in %s: %w", dir, err)
	}
	if standby != nil {
		if err := validateStandby(standby); err != nil {
			return fail(err)
		}
	}
	for _, n := range sync {
		if n == "" || strings.ContainsAny(n, "\n'") {
			return fail(fmt.Errorf("sync: member name %q is empty or contains a quote", n))
		}
	}
	st, err := i.DataDirState()
	if err != nil {
		return fail(err)
	}
	if st != DataDirValid {
		return fail(fmt.Errorf("the data directory is %s", st))
	}

	// pgha.conf
	settings := i.pghaSettings(standby, sync)
	path := filepath.Join(dir, PghaConfFile)
	oldText, err := readIfExists(path)
	if err != nil {
		return fail(err)
	}
	newText := renderPghaConf(settings)
	if newText != oldText {
		old := parsePghaConf(oldText)
		// Only pgha's own settings make the agent restart the server. An
		// operator's parameter that needs a restart is left to PostgreSQL,
		// which marks it pending_restart (PendingRestart) until the
		// operator's restart: a configuration edit never restarts a
		// server by surprise.
		operator := map[string]bool{}
		for k := range i.parameters() {
			operator[strings.ToLower(k)] = true
		}
		// archive_mode is the operator's choice too (the archive
		// settings): a change waits for the operator's restart.
		operator["archive_mode"] = true
		restarts := func(name string) bool {
			n := strings.ToLower(name)
			return restartParams[n] && !operator[n] && slices.ContainsFunc(settings, func(s setting) bool { return s.name == n })
		}
		seen := map[string]bool{}
		for _, s := range settings {
			seen[s.name] = true
			if v, ok := old[s.name]; !ok || v != s.value {
				ch.What = append(ch.What, s.name)
				ch.NeedsRestart = ch.NeedsRestart || restarts(s.name)
			}
		}
		for k := range old {
			if !seen[k] {
				ch.What = append(ch.What, k) // an operator's parameter taken out
			}
		}
		if err := WriteFileAs(path, []byte(newText), 0o600, i.cfg.RunAs); err != nil {
			return fail(err)
		}
		ch.Changed = true
	}

	// postgresql.conf include
	if err := i.rewrite("postgresql.conf", func(s string) (string, error) {
		s, _ = ensureInclude(s)
		return s, nil
	}, &ch); err != nil {
		return fail(err)
	}
	// pg_hba.conf and pg_ident.conf
	hba := i.hbaBlock()
	if err := i.rewrite("pg_hba.conf", func(s string) (string, error) { return replaceManagedBlock(s, hba) }, &ch); err != nil {
		return fail(err)
	}
	ident := i.identBlock()
	if err := i.rewrite("pg_ident.conf", func(s string) (string, error) { return replaceManagedBlock(s, ident) }, &ch); err != nil {
		return fail(err)
	}

	// standby.signal
	sig := filepath.Join(dir, standbySignal)
	_, statErr := os.Stat(sig)
	has := statErr == nil
	switch {
	case standby != nil && !has:
		if err := WriteFileAs(sig, nil, 0o600, i.cfg.RunAs); err != nil {
			return fail(err)
		}
		ch.Changed, ch.NeedsRestart = true, true
		ch.What = append(ch.What, standbySignal)
	case standby == nil && has:
		if err := os.Remove(sig); err != nil {
			return fail(fmt.Errorf("remove %s: %w", sig, err))
		}
		ch.Changed, ch.NeedsRestart = true, true
		ch.What = append(ch.What, standbySignal)
	}
	if ch.Changed {
		i.log.Info("configured postgres", "changed", strings.Join(ch.What, ","), "needs_restart", ch.NeedsRestart)
	}
	return ch, nil
}

// rewrite applies edit to a file in the data dir and writes it back
// atomically if the content changed.
func (i *Instance) rewrite(name string, edit func(string) (string, error), ch *ConfigChange) error {
	path := filepath.Join(i.cfg.DataDir, name)
	old, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	updated, err := edit(string(old))
	if err != nil {
		return fmt.Errorf("update %s: %w", path, err)
	}
	if updated == string(old) {
		return nil
	}
	mode := os.FileMode(0o600)
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	if err := WriteFileAs(path, []byte(updated), mode, i.cfg.RunAs); err != nil {
		return err
	}
	ch.Changed = true
	ch.What = append(ch.What, name)
	return nil
}

func readIfExists(path string) (string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return string(b), nil
}

// SetParameters replaces the operator's PostgreSQL parameters (Config's
// Parameters at first): the next Configure writes them. The agent sets the
// cluster-wide ones from Raft here.
func (i *Instance) SetParameters(params map[string]string) error {
	if err := ValidateParameters(params); err != nil {
		return err
	}
	i.paramsMu.Lock()
	defer i.paramsMu.Unlock()
	i.params = maps.Clone(params)
	return nil
}

// parameters returns the operator's parameters in force.
func (i *Instance) parameters() map[string]string {
	i.paramsMu.Lock()
	defer i.paramsMu.Unlock()
	return i.params
}

// SetHBA replaces the operator's pg_hba.conf lines (Config's HBA at first),
// placed after pgha's own in the managed block by the next Configure.
func (i *Instance) SetHBA(lines []string) error {
	if err := ValidateHBA(lines); err != nil {
		return err
	}
	i.paramsMu.Lock()
	defer i.paramsMu.Unlock()
	i.hba = slices.Clone(lines)
	return nil
}

func (i *Instance) hbaLines() []string {
	i.paramsMu.Lock()
	defer i.paramsMu.Unlock()
	return i.hba
}
