package consensus

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// CommandType names a kind of state change. Types are never renamed or
// reused; a change in a payload's meaning gets a new Version instead.
type CommandType string

// The command types the FSM understands. The comment after each names the
// payload and the preconditions checked when the command is applied.
const (
	CmdInitCluster     CommandType = "init_cluster"      // InitClusterData; refused if already initialised; sets Epoch=1
	CmdSetSystemID     CommandType = "set_system_id"     // SetSystemIDData; refused if already set to a different non-zero value
	CmdUpsertMember    CommandType = "upsert_member"     // UpsertMemberData
	CmdRemoveMember    CommandType = "remove_member"     // RemoveMemberData; refused for the current primary
	CmdPromote         CommandType = "promote"           // PromoteData; epoch must be Epoch+1, primary must be a member
	CmdSetPaused       CommandType = "set_paused"        // SetPausedData
	CmdSetSwitchover   CommandType = "set_switchover"    // SetSwitchoverData
	CmdSetSyncStandbys CommandType = "set_sync_standbys" // SetSyncStandbysData; epoch must equal Epoch
	CmdSetConfig       CommandType = "set_config"        // SetConfigData; base must equal Config.Version
	// ScheduleSwitchoverData; refused if one is scheduled already (a zero
	// one clears it: flush)
	CmdScheduleSwitchover CommandType = "schedule_switchover"
	CmdSetTags            CommandType = "set_tags" // SetTagsData; the member must exist, keys and values valid
	// ScheduleRestartData; the member must exist, and have none scheduled
	// already (a zero At clears it: flush)
	CmdScheduleRestart CommandType = "schedule_restart"
	// SettleLeasesData; clears Config.PriorFenceTimeout if Config.Version
	// is still the one given
	CmdSettleLeases CommandType = "settle_leases"
	// RecordBackupData; the member must exist, and the backup must have
	// finished after the one recorded (an older report changes nothing)
	CmdRecordBackup CommandType = "record_backup"
)

// CurrentVersion is the payload version the constructors in this package
// produce for every command type.
const CurrentVersion = 1

// Command is one typed, versioned state change. Data holds the payload
// struct matching Type (for example PromoteData for CmdPromote); the
// constructors below build well-formed commands.
//
// The wire form is the JSON envelope {"type": "...", "version": N, "data": {...}}.
type Command struct {
	Type    CommandType
	Version int
	Data    any
}

// Payloads, one per command type (version 1).
type (
	InitClusterData struct {
		ClusterID string `json:"cluster_id"`
		Primary   string `json:"primary"`
	}
	SetSystemIDData struct {
		SystemID uint64 `json:"system_id"`
	}
	UpsertMemberData struct {
		Member Member `json:"member"`
	}
	RemoveMemberData struct {
		Name string `json:"name"`
	}
	// PromoteData is version 2 of the promote payload. Version 1 had only
	// Primary and Epoch; it decodes into this type with the rest zero.
	PromoteData struct {
		Primary string `json:"primary"`
		Epoch   uint64 `json:"epoch"`
		// SyncStandbys is the synchronous set of the new epoch, committed
		// with the promotion: the new primary writes it into
		// synchronous_standby_names before it is promoted, so it never
		// acknowledges a commit that no member of a recorded set holds, and
		// a survivor of the set can be promoted if it fails at once.
		// nil (version 1): the old set minus the new primary.
		SyncStandbys []string `json:"sync_standbys"`
		// Timeline is the PostgreSQL timeline the new primary must take:
		// one above every timeline any earlier promotion took (State.Timeline),
		// so two primaries never share a timeline ID even when the history
		// file of a short-lived timeline never reached the next candidate.
		// 0 (version 1): not reserved.
		Timeline uint32 `json:"timeline,omitempty"`
		// Record says why, when and from whom, for State.History
		// (version 3; empty before).
		Record PromotionRecord `json:"record,omitzero"`
	}
	SetPausedData struct {
		Paused bool `json:"paused"`
	}
	SetSwitchoverData struct {
		Switchover Switchover `json:"switchover"`
	}
	SetSyncStandbysData struct {
		Names []string `json:"names"`
		Epoch uint64   `json:"epoch"`
	}
	// SetTagsData sets (or, with "", removes) run-time tags of a member:
	// nofailover, nosync, noloadbalance, clonefrom ("true"/"false") and priority (an
	// integer).
	SetTagsData struct {
		Member string            `json:"member"`
		Tags   map[string]string `json:"tags"`
	}
	ScheduleSwitchoverData struct {
		Switchover ScheduledSwitchover `json:"switchover"`
	}
	ScheduleRestartData struct {
		Member  string           `json:"member"`
		Restart ScheduledRestart `json:"restart"`
	}
	// SetConfigData replaces the cluster-wide configuration. Base is the
	// version it was edited from: a concurrent edit committed first makes
	// this one refused, never silently lost.
	SetConfigData struct {
		Base   uint64        `json:"base"`
		Config ClusterConfig `json:"config"`
	}
	// SettleLeasesData says that no lease granted under a fence_timeout
	// before Version's can still run.
	SettleLeasesData struct {
		Version uint64 `json:"version"`
	}
	// RecordBackupData records a finished backup as State.LastBackup.
	RecordBackupData struct {
		Backup BackupRecord `json:"backup"`
	}
)

// InitCluster records the cluster identity and its first primary (epoch 1).
func InitCluster(clusterID, primary string) Command {
	return Command{CmdInitCluster, CurrentVersion, InitClusterData{ClusterID: clusterID, Primary: primary}}
}

// SetSystemID records the PostgreSQL system identifier of the cluster.
func SetSystemID(id uint64) Command {
	return Command{CmdSetSystemID, CurrentVersion, SetSystemIDData{SystemID: id}}
}

// UpsertMember adds m or replaces the member with the same name.
func UpsertMember(m Member) Command {
	return Command{CmdUpsertMember, CurrentVersion, UpsertMemberData{Member: m}}
}

// RemoveMember removes the named member. Removing an absent member succeeds.
func RemoveMember(name string) Command {
	return Command{CmdRemoveMember, CurrentVersion, RemoveMemberData{Name: name}}
}

// Promote makes name the primary at epoch, which must be the current Epoch+1.
func Promote(name string, epoch uint64) Command {
	return PromoteWith(name, epoch, nil, 0)
}

// PromoteVersion is the payload version of PromoteWith's commands.
const PromoteVersion = 3

// PromoteWith promotes name for epoch with the synchronous set of the new
// epoch and the timeline it reserves (see PromoteData).
func PromoteWith(name string, epoch uint64, syncStandbys []string, timeline uint32) Command {
	return PromoteRecorded(name, epoch, syncStandbys, timeline, PromotionRecord{})
}

// PromoteRecorded is PromoteWith with what State.History keeps of it.
func PromoteRecorded(name string, epoch uint64, syncStandbys []string, timeline uint32, rec PromotionRecord) Command {
	return Command{CmdPromote, PromoteVersion, PromoteData{Primary: name, Epoch: epoch, SyncStandbys: syncStandbys, Timeline: timeline, Record: rec}}
}

// SetPaused turns automatic failover off (true) or on (false).
func SetPaused(paused bool) Command {
	return Command{CmdSetPaused, CurrentVersion, SetPausedData{Paused: paused}}
}

// SetSwitchover starts a planned switchover (or, with a zero Switchover,
// cancels the one in progress).
func SetSwitchover(sw Switchover) Command {
	return Command{CmdSetSwitchover, CurrentVersion, SetSwitchoverData{Switchover: sw}}
}

// SetSyncStandbys sets the synchronous standby set for the current epoch.
func SetSyncStandbys(names []string, epoch uint64) Command {
	return Command{CmdSetSyncStandbys, CurrentVersion, SetSyncStandbysData{Names: names, Epoch: epoch}}
}

// SetTags sets or removes run-time tags of member (see SetTagsData).
func SetTags(member string, tags map[string]string) Command {
	return Command{CmdSetTags, CurrentVersion, SetTagsData{Member: member, Tags: tags}}
}

// ScheduleRestart records a restart of member's PostgreSQL for later; a
// zero one clears it.
func ScheduleRestart(member string, r ScheduledRestart) Command {
	return Command{CmdScheduleRestart, CurrentVersion, ScheduleRestartData{Member: member, Restart: r}}
}

// ScheduleSwitchover records a switchover for later; a zero one clears it.
func ScheduleSwitchover(sw ScheduledSwitchover) Command {
	return Command{CmdScheduleSwitchover, CurrentVersion, ScheduleSwitchoverData{Switchover: sw}}
}

// SetConfig replaces the cluster-wide configuration edited from version
// base; the committed copy gets version base+1.
func SetConfig(base uint64, c ClusterConfig) Command {
	return Command{CmdSetConfig, CurrentVersion, SetConfigData{Base: base, Config: c}}
}

// SettleLeases clears the prior fence timeout of configuration version.
func SettleLeases(version uint64) Command {
	return Command{CmdSettleLeases, CurrentVersion, SettleLeasesData{Version: version}}
}

// RecordBackup records a finished backup.
func RecordBackup(b BackupRecord) Command {
	return Command{CmdRecordBackup, CurrentVersion, RecordBackupData{Backup: b}}
}

// envelope is the wire form of a Command.
type envelope struct {
	Type    CommandType     `json:"type"`
	Version int             `json:"version"`
	Data    json.RawMessage `json:"data"`
}

// Encode returns the wire form of c. It refuses a command the FSM would not
// understand, so that a malformed command fails before reaching the log.
func (c Command) Encode() ([]byte, error) {
	if _, err := lookupDecoder(c.Type, c.Version); err != nil {
		return nil, fmt.Errorf("encode %s v%d: %w", c.Type, c.Version, err)
	}
	data, err := json.Marshal(c.Data)
	if err != nil {
		return nil, fmt.Errorf("encode %s v%d: %w", c.Type, c.Version, err)
	}
	// Round-trip the payload through the strict decoder: a Data of the wrong
	// Go type (say PromoteData under CmdSetPaused) fails here, not in the FSM.
	if _, err := decodePayload(c.Type, c.Version, data); err != nil {
		return nil, fmt.Errorf("encode %s v%d: %w", c.Type, c.Version, err)
	}
	return json.Marshal(envelope{Type: c.Type, Version: c.Version, Data: data})
}

// DecodeCommand parses the wire form of a command. Data of the result holds
// the payload struct of the command's type (a value, not a pointer).
// Unknown types and versions, unknown fields and malformed JSON are errors
// wrapping ErrUnknownCommand.
func DecodeCommand(b []byte) (Command, error) {
	var env envelope
	if err := strictUnmarshal(b, &env); err != nil {
		return Command{}, fmt.Errorf("%w: envelope: %v", ErrUnknownCommand, err)
	}
	data, err := decodePayload(env.Type, env.Version, env.Data)
	if err != nil {
		return Command{}, err
	}
	return Command{Type: env.Type, Version: env.Version, Data: data}, nil
}

func decodePayload(t CommandType, version int, raw json.RawMessage) (any, error) {
	dec, err := lookupDecoder(t, version)
	if err != nil {
		return nil, err
	}
	if t := bytes.TrimSpace(raw); len(t) == 0 || bytes.Equal(t, []byte("null")) {
		return nil, fmt.Errorf("%w: %s v%d: missing data", ErrUnknownCommand, t, version)
	}
	data, err := dec(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %s v%d: data: %v", ErrUnknownCommand, t, version, err)
	}
	return data, nil
}

func lookupDecoder(t CommandType, version int) (func(json.RawMessage) (any, error), error) {
	spec, ok := commands[t]
	if !ok {
		return nil, fmt.Errorf("%w: unknown type %q", ErrUnknownCommand, t)
	}
	dec, ok := spec.decoders[version]
	if !ok {
		return nil, fmt.Errorf("%w: %s: unknown version %d", ErrUnknownCommand, t, version)
	}
	return dec, nil
}

// strictUnmarshal decodes exactly one JSON value and rejects unknown
// fields: a payload this build does not fully understand is an error, not a
// partial apply.
func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after JSON value")
	}
	return nil
}
