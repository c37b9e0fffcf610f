package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// Status is one observation of the local server. It travels as JSON between
// agents.
type Status struct {
	Running bool `json:"running"` // accepts connections (Status connected and queried it)
	PID     int  `json:"pid"`     // postmaster PID, 0 when no server runs
	// Unresponsive: the postmaster lives (PID) but the status queries
	// failed (no free connection slot, a stalled backend, a timeout).
	// That is not "not running" (DESIGN "Dead means gone"): the server may
	// still acknowledge commits for its clients. InRecovery then comes
	// from pg_control ("in production" is a primary).
	Unresponsive     bool      `json:"unresponsive,omitempty"`
	InRecovery       bool      `json:"in_recovery"`
	Timeline         uint32    `json:"timeline"`     // primary: timeline of the current WAL file; standby: received (else checkpoint) timeline
	CurrentLSN       LSN       `json:"current_lsn"`  // primary: pg_current_wal_lsn()
	ReceivedLSN      LSN       `json:"received_lsn"` // standby: pg_last_wal_receive_lsn()
	ReplayedLSN      LSN       `json:"replayed_lsn"` // standby: pg_last_wal_replay_lsn()
	ReplayTime       time.Time `json:"replay_time"`  // pg_last_xact_replay_timestamp(), zero if null
	SystemID         uint64    `json:"system_id"`
	Streaming        bool      `json:"streaming"` // standby: WAL receiver status is streaming
	UpstreamHost     string    `json:"upstream_host"`
	UpstreamPort     int       `json:"upstream_port"`
	Replication      []Replica `json:"replication"` // pg_stat_replication
	Slots            []Slot    `json:"slots"`       // pg_replication_slots
	SyncStandbyNames string    `json:"sync_standby_names"`
	// PendingRestart are the settings changed in the configuration files
	// that take effect only at the next restart (pg_settings.pending_restart).
	PendingRestart []string `json:"pending_restart,omitempty"`
	Error          string   `json:"error,omitempty"`
}

// Replica is one row of pg_stat_replication.
type Replica struct {
	ApplicationName string `json:"application_name"`
	ClientAddr      string `json:"client_addr"`
	State           string `json:"state"`
	SentLSN         LSN    `json:"sent_lsn"`
	WriteLSN        LSN    `json:"write_lsn"`
	FlushLSN        LSN    `json:"flush_lsn"`
	ReplayLSN       LSN    `json:"replay_lsn"`
	SyncState       string `json:"sync_state"`
}

// Slot is one replication slot.
type Slot struct {
	Name       string `json:"name"`
	Active     bool   `json:"active"`
	RestartLSN LSN    `json:"restart_lsn"`
}

// statusTimeout bounds one Status call.
const statusTimeout = time.Second

const statusSQL = `
SELECT pg_is_in_recovery(),
       (SELECT system_identifier FROM pg_control_system()),
       (SELECT timeline_id FROM pg_control_checkpoint()),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END,
       pg_last_wal_receive_lsn()::text,
       pg_last_wal_replay_lsn()::text,
       pg_last_xact_replay_timestamp(),
       current_setting('synchronous_standby_names'),
       w.status, w.received_tli, w.sender_host, w.sender_port,
       ARRAY(SELECT name FROM pg_settings WHERE pending_restart ORDER BY name)
FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver AS w ON true`

const replicationSQL = `
SELECT coalesce(application_name, ''), coalesce(host(client_addr), ''), coalesce(state, ''),
       sent_lsn::text, write_lsn::text, flush_lsn::text, replay_lsn::text, coalesce(sync_state, '')
FROM pg_stat_replication ORDER BY application_name, pid`

const slotsSQL = `
SELECT slot_name, active, restart_lsn::text FROM pg_replication_slots ORDER BY slot_name`

// Status observes the server. It never takes much longer than a second: a
// server that does not run is reported from postmaster.pid alone, and every
// query shares one deadline. Failures are reported in Status.Error; Running is
// true only when the queries succeeded.
func (i *Instance) Status(ctx context.Context) Status {
	var st Status
	lock, err := i.lockFile() // read once: the PID and the status line
	pid := lock.pid
	if err != nil {
		// Unreadable or garbled: a postmaster may be there (starting,
		// say). Unknown is not gone.
		st.Error = err.Error()
		st.Unresponsive = errors.Is(err, ErrPIDFileGarbled)
		return st
	}
	if pid != 0 && isZombie(pid) {
		// The postmaster has exited and waits to be reaped (where PID 1
		// reaps late): dead means gone, though nothing can start yet.
		st.Error = fmt.Sprintf("the postmaster (pid %d) has exited", pid)
		return st
	}
	st.PID = pid
	if pid == 0 {
		return st
	}
	if Stopped(pid) {
		// Frozen (freeze.go): a query would only wait out its timeout.
		// pg_control says what it was.
		st = Status{PID: pid, Unresponsive: true, Error: fmt.Sprintf("the postmaster (pid %d) is stopped (SIGSTOP): frozen", pid)}
		st.InRecovery = i.inRecoveryByControl()
		return st
	}
	if i.shutdownUnderway(lock.status) {
		// It refuses every connection and has no session left, and a
		// refused connect costs tens of milliseconds on a loaded host,
		// which a switchover waits out on every observation of the
		// stopping primary. What a refused connect would have said, at
		// once.
		st = Status{PID: pid, Unresponsive: true, Error: fmt.Sprintf("the postmaster (pid %d) is shutting down", pid)}
		st.InRecovery = i.inRecoveryByControl()
		return st
	}
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	err = i.with(ctx, &i.stat, func(c *pgx.Conn) error { return queryStatus(ctx, c, &st) })
	if err != nil {
		st = Status{PID: pid, Unresponsive: true, Error: fmt.Sprintf("query status: %v", err)}
		st.InRecovery = i.inRecoveryByControl()
		return st
	}
	st.Running = true
	return st
}

// shutdownUnderway: the postmaster says it is stopping (postmaster.pid) and
// either this Instance asked for a fast or immediate stop, which ends every
// session, or the shutdown checkpoint has begun (pg_control), which comes
// after the last session ended. A smart shutdown's sessions go on, and
// Status goes on answering through its connection.
func (i *Instance) shutdownUnderway(pmStatus string) bool {
	if pmStatus != "stopping" {
		return false
	}
	if i.stoppingFast.Load() {
		return true
	}
	state, err := i.ClusterStateNow()
	return err == nil && (state == "shutting down" || state == "shut down")
}

// inRecoveryByControl says from pg_control, without a connection, whether
// the live server is a standby; false when unknown (judged as a possible
// writer).
func (i *Instance) inRecoveryByControl() bool {
	state, err := i.ClusterStateNow()
	return err == nil && state != "in production"
}

func queryStatus(ctx context.Context, c *pgx.Conn, st *Status) error {
	var b pgx.Batch
	b.Queue(statusSQL)
	b.Queue(replicationSQL)
	b.Queue(slotsSQL)
	br := c.SendBatch(ctx, &b)
	defer br.Close()

	var (
		sysID                                 int64
		ckptTLI                               int32
		cur, walfile, recv, replay, walStatus *string
		replayTime                            *time.Time
		recvTLI, senderPort                   *int32
		senderHost                            *string
	)
	err := br.QueryRow().Scan(&st.InRecovery, &sysID, &ckptTLI, &cur, &walfile, &recv, &replay,
		&replayTime, &st.SyncStandbyNames, &walStatus, &recvTLI, &senderHost, &senderPort, &st.PendingRestart)
	if err != nil {
		return err
	}
	st.SystemID = uint64(sysID)
	st.Timeline = uint32(ckptTLI)
	if walfile != nil && len(*walfile) >= 8 {
		if tli, err := strconv.ParseUint((*walfile)[:8], 16, 32); err == nil {
			st.Timeline = uint32(tli)
		}
	}
	if recvTLI != nil && *recvTLI > 0 {
		st.Timeline = uint32(*recvTLI)
	}
	if st.CurrentLSN, err = parseNullLSN(cur); err != nil {
		return err
	}
	if st.ReceivedLSN, err = parseNullLSN(recv); err != nil {
		return err
	}
	if st.ReplayedLSN, err = parseNullLSN(replay); err != nil {
		return err
	}
	if replayTime != nil {
		st.ReplayTime = *replayTime
	}
	st.Streaming = walStatus != nil && *walStatus == "streaming"
	if senderHost != nil {
		st.UpstreamHost = *senderHost
	}
	if senderPort != nil {
		st.UpstreamPort = int(*senderPort)
	}

	rows, err := br.Query()
	if err != nil {
		return err
	}
	for rows.Next() {
		var r Replica
		var sent, write, flush, rep *string
		if err := rows.Scan(&r.ApplicationName, &r.ClientAddr, &r.State, &sent, &write, &flush, &rep, &r.SyncState); err != nil {
			rows.Close()
			return err
		}
		r.SentLSN, _ = parseNullLSN(sent)
		r.WriteLSN, _ = parseNullLSN(write)
		r.FlushLSN, _ = parseNullLSN(flush)
		r.ReplayLSN, _ = parseNullLSN(rep)
		st.Replication = append(st.Replication, r)
	}
	if err := rows.Err(); err != nil {
		return err
	}

	rows, err = br.Query()
	if err != nil {
		return err
	}
	for rows.Next() {
		var s Slot
		var restart *string
		if err := rows.Scan(&s.Name, &s.Active, &restart); err != nil {
			rows.Close()
			return err
		}
		s.RestartLSN, _ = parseNullLSN(restart)
		st.Slots = append(st.Slots, s)
	}
	return rows.Err()
}
