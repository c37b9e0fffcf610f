package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pgha/pgha/consensus"
	"github.com/pgha/pgha/postgres"
)

// Backups on demand (pgha-agent backup). POST /backup without a member
// goes to the Raft leader, which picks where the backup runs: the standby
// that streams from the primary with the least lag, so the primary's disks
// only serve the start and stop of the backup, or the primary when no
// standby is healthy. That member's agent runs the backup tool in its
// backup loop, one at a time, and reports the finished backup to the
// leader, which records it in Raft (State.LastBackup: list shows it).
//
// Concurrency: backupLoop is the only goroutine that runs a backup; the
// handler hands it a request over backupReq and never waits for the run.
// backupState guards the status the observation reports.

// BackupStatus is a member's backup run: running now, or the last one.
type BackupStatus struct {
	Tool     string    `json:"tool"`
	Running  bool      `json:"running"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished,omitzero"`
	Error    string    `json:"error,omitempty"`
	// Output is the tool's last lines (a failure's explanation).
	Output []string `json:"output,omitempty"`
}

// backupState is the status of this agent's backups.
type backupState struct {
	mu     sync.Mutex
	status *BackupStatus // nil until the first backup
}

func (b *backupState) get() *BackupStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.status == nil {
		return nil
	}
	s := *b.status
	s.Output = slices.Clone(s.Output)
	return &s
}

func (b *backupState) set(s BackupStatus) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.status = &s
}

// backupRequest asks the backup loop for a backup with the settings in
// force when it was asked.
type backupRequest struct {
	settings BackupConfig
}

// backupLoop runs the backups this agent is asked for, one at a time,
// until ctx ends (which stops a running tool).
func (a *Agent) backupLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case req := <-a.backupReq:
			a.runBackup(ctx, req.settings)
		}
	}
}

// runBackup runs the backup tool on this node's PostgreSQL and reports a
// success to the leader.
func (a *Agent) runBackup(ctx context.Context, b BackupConfig) {
	pg := a.pgStatus(ctx)
	standby := pg.Running && pg.InRecovery
	st := BackupStatus{Tool: b.Tool, Running: true, Started: time.Now()}
	a.backups.set(st)
	a.log.Info("backup", "tool", b.Tool, "standby", standby, "reason", "an operator asked for it")
	path, err := exec.LookPath(b.Command)
	var out []string
	if err == nil {
		cmd, cerr := postgres.CommandAs(ctx, a.cfg.Postgres.RunAs, path, b.backupArgs(a.cfg.Postgres.DataDir, standby)...)
		if cerr != nil {
			err = cerr
		} else {
			// WAL-G connects to the local server through libpq's variables;
			// pgBackRest through its own configuration.
			cmd.Env = append(cmd.Env, "LC_ALL=C", "PGHOST="+a.cfg.Postgres.SocketDir, fmt.Sprintf("PGPORT=%d", a.cfg.Postgres.Port), "PGUSER="+a.cfg.Postgres.Superuser, "PGDATABASE=postgres")
			var o []byte
			o, err = cmd.CombinedOutput()
			out = lastLines(string(o), 15)
			for _, l := range out {
				a.log.Debug("backup", "output", l)
			}
		}
	}
	st.Running, st.Finished, st.Output = false, time.Now(), out
	if err != nil {
		st.Error = fmt.Sprintf("%s backup: %v", b.Tool, err)
		a.backups.set(st)
		a.log.Error("backup failed", "tool", b.Tool, "err", err, "output", strings.Join(out, " | "))
		return
	}
	a.backups.set(st)
	a.log.Info("backup finished", "tool", b.Tool, "took", st.Finished.Sub(st.Started).Round(time.Millisecond))
	rec := consensus.BackupRecord{Member: a.cfg.Name, Tool: b.Tool, Started: st.Started.UTC(), Finished: st.Finished.UTC(), FromStandby: standby}
	body, _ := json.Marshal(rec)
	// The leader may change meanwhile: a few tries.
	for try := 0; try < 5; try++ {
		base, err := a.leaderAPI()
		if err == nil {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err = postJSON(rctx, a.http, base+"/internal/backup", body, nil)
			cancel()
			if err == nil {
				return
			}
		}
		a.log.Warn("cannot record the backup in the cluster state yet", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
	st.Error = "the backup finished but could not be recorded in the cluster state"
	a.backups.set(st)
}

// lastLines are the last n non-empty lines of s.
func lastLines(s string, n int) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return out
}

// handleBackup is POST /backup: {"member": NAME} runs the backup there;
// without a member the leader picks one. It answers once the backup has
// started (202); the member's backup status (GET /cluster) says how it
// ends, and State.LastBackup records it.
func (a *Agent) handleBackup(w http.ResponseWriter, r *http.Request) {
	body, req, ok := readControl(w, r)
	if !ok {
		return
	}
	b := a.backup()
	if b.Tool == "" {
		writeJSON(w, http.StatusConflict, apiError{Error: "no backup tool is configured: set backup.tool (pgbackrest or wal-g) with pgha-agent edit-config --set backup.tool=pgbackrest"})
		return
	}
	st := a.node.State()
	if req.Member == "" {
		if !a.node.IsLeader() {
			a.forwardToLeader(w, r, body)
			return
		}
		pick, why := backupMember(st, a.obs.snapshot())
		if pick == "" {
			writeJSON(w, http.StatusServiceUnavailable, apiError{Error: "backup: " + why})
			return
		}
		a.log.Info("decision", "command", "backup", "member", pick, "reason", why)
		req.Member = pick
		body, _ = json.Marshal(req)
	}
	m, ok := st.Members[req.Member]
	if !ok {
		writeJSON(w, http.StatusNotFound, apiError{Error: fmt.Sprintf("no member named %q", req.Member)})
		return
	}
	if req.Member != a.cfg.Name {
		a.forwardTo(w, r, m.APIURL, body)
		return
	}
	select {
	case a.backupReq <- backupRequest{settings: b}:
	default:
		writeJSON(w, http.StatusConflict, apiError{Error: "a backup already runs on " + a.cfg.Name})
		return
	}
	writeJSON(w, http.StatusAccepted, ControlResult{Member: a.cfg.Name, Message: fmt.Sprintf("backup started on %s with %s", a.cfg.Name, b.Tool)})
}

// handleRecordBackup is POST /internal/backup (leader): a member's
// finished backup, recorded in Raft.
func (a *Agent) handleRecordBackup(w http.ResponseWriter, r *http.Request, body []byte) {
	var rec consensus.BackupRecord
	if err := json.Unmarshal(body, &rec); err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "body must be a backup record: " + err.Error()})
		return
	}
	a.log.Info("decision", "command", "record_backup", "member", rec.Member, "tool", rec.Tool, "finished", rec.Finished)
	if err := a.node.Apply(r.Context(), consensus.RecordBackup(rec)); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ControlResult{Message: "recorded"})
}

// backupMember picks where a backup runs: the standby streaming from the
// primary in the current epoch with the least replay lag (ties: by name),
// else the primary if it runs; "" and why when neither. The second result
// says why the pick.
func backupMember(st consensus.State, obs map[string]memberView) (string, string) {
	p, ok := obs[st.Primary]
	primaryRuns := ok && p.reachable && p.obs.Epoch == st.Epoch && p.obs.Postgres.Running && !p.obs.Postgres.InRecovery
	pm := st.Members[st.Primary]
	best, bestLag := "", int64(-1)
	for _, name := range slices.Sorted(maps.Keys(st.Members)) {
		o, ok := obs[name]
		pg := o.obs.Postgres
		if name == st.Primary || !ok || !o.reachable || o.obs.Epoch != st.Epoch || !pg.Running || !pg.InRecovery || !pg.Streaming ||
			pg.UpstreamHost != pm.PGHost || pg.UpstreamPort != pm.PGPort || o.obs.Diverged {
			continue
		}
		lag := int64(0)
		if primaryRuns && p.obs.Postgres.CurrentLSN > pg.ReplayedLSN {
			lag = int64(p.obs.Postgres.CurrentLSN - pg.ReplayedLSN)
		}
		if best == "" || lag < bestLag {
			best, bestLag = name, lag
		}
	}
	switch {
	case best != "":
		return best, "the standby streaming from the primary with the least lag"
	case primaryRuns:
		return st.Primary, "no standby streams from the primary: the backup runs on the primary"
	}
	return "", "neither a streaming standby nor a running primary to back up"
}
