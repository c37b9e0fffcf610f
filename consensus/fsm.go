package consensus

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// The FSM is a command table in the style of hashicorp/consul's
// agent/consul/fsm: every CommandType has one entry holding a decoder per
// payload version it accepts and one apply function. Anything not in the
// table fails loudly with ErrUnknownCommand; nothing is silently ignored.
//
// Determinism: an apply function depends only on the State and the payload,
// never on the clock, the host or map iteration order, so every replica
// reaches the same State and the same error for the same log entry.
//
// Versions: when a payload changes meaning, add a decoder for the new
// version next to the old one; old decoders convert into the current payload
// type so apply functions only ever see the newest shape. A leader must not
// write a version that some voter's build cannot decode (rolling upgrades
// upgrade every member before any new version is used).

// commandSpec is one row of the command table.
type commandSpec struct {
	decoders map[int]func(json.RawMessage) (any, error)
	apply    func(s *State, data any) error
}

// commands is the table. It is never modified after package init.
var commands = map[CommandType]commandSpec{
	CmdInitCluster:        v1(applyInitCluster),
	CmdSetSystemID:        v1(applySetSystemID),
	CmdUpsertMember:       v1(applyUpsertMember),
	CmdRemoveMember:       v1(applyRemoveMember),
	CmdPromote:            promoteSpec(),
	CmdSetPaused:          v1(applySetPaused),
	CmdSetSyncStandbys:    v1(applySetSyncStandbys),
	CmdSetSwitchover:      v1(applySetSwitchover),
	CmdSetConfig:          v1(applySetConfig),
	CmdScheduleSwitchover: v1(applyScheduleSwitchover),
	CmdSetTags:            v1(applySetTags),
	CmdScheduleRestart:    v1(applyScheduleRestart),
	CmdSettleLeases:       v1(applySettleLeases),
	CmdRecordBackup:       v1(applyRecordBackup),
}

// v1 builds the row of a command whose only accepted version is 1 and whose
// payload type is T.
func v1[T any](apply func(*State, T) error) commandSpec {
	return commandSpec{
		decoders: map[int]func(json.RawMessage) (any, error){
			1: func(raw json.RawMessage) (any, error) {
				var d T
				if err := strictUnmarshal(raw, &d); err != nil {
					return nil, err
				}
				return d, nil
			},
		},
		apply: func(s *State, data any) error {
			d, ok := data.(T)
			if !ok {
				return fmt.Errorf("%w: payload is %T, want %T", ErrUnknownCommand, data, d)
			}
			return apply(s, d)
		},
	}
}

// promoteSpec accepts version 1 (primary and epoch), version 2 (with the
// new epoch's synchronous set and reserved timeline) and version 3 (with
// the record for the history); all decode into PromoteData.
func promoteSpec() commandSpec {
	spec := v1(applyPromote)
	// Version 3 adds the record; a version 2 payload has none.
	spec.decoders[2] = func(raw json.RawMessage) (any, error) {
		var d PromoteData
		if err := strictUnmarshal(raw, &d); err != nil {
			return nil, err
		}
		if d.Record != (PromotionRecord{}) {
			return nil, errors.New("a version 2 promote has no record")
		}
		return d, nil
	}
	spec.decoders[3] = func(raw json.RawMessage) (any, error) {
		var d PromoteData
		if err := strictUnmarshal(raw, &d); err != nil {
			return nil, err
		}
		return d, nil
	}
	spec.decoders[1] = func(raw json.RawMessage) (any, error) {
		var d struct {
			Primary string `json:"primary"`
			Epoch   uint64 `json:"epoch"`
		}
		if err := strictUnmarshal(raw, &d); err != nil {
			return nil, err
		}
		return PromoteData{Primary: d.Primary, Epoch: d.Epoch}, nil
	}
	return spec
}

// applyCommand applies c to s in place. On error s may be partly modified:
// callers apply to a clone and keep it only on success.
func applyCommand(s *State, c Command) error {
	spec, ok := commands[c.Type]
	if !ok {
		return fmt.Errorf("%w: unknown type %q", ErrUnknownCommand, c.Type)
	}
	if _, ok := spec.decoders[c.Version]; !ok {
		return fmt.Errorf("%w: %s: unknown version %d", ErrUnknownCommand, c.Type, c.Version)
	}
	if s.Members == nil {
		s.Members = map[string]Member{}
	}
	return spec.apply(s, c.Data)
}

func refuse(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrRefused}, args...)...)
}

func applyInitCluster(s *State, d InitClusterData) error {
	if s.Initialized() {
		return refuse("cluster %q is already initialised with primary %q", s.ClusterID, s.Primary)
	}
	if d.ClusterID == "" {
		return refuse("cluster_id is empty")
	}
	if d.Primary == "" {
		return refuse("primary is empty")
	}
	s.ClusterID = d.ClusterID
	s.Primary = d.Primary
	s.Epoch = 1
	return nil
}

func applySetSystemID(s *State, d SetSystemIDData) error {
	if d.SystemID == 0 {
		return refuse("system_id is zero")
	}
	// One cluster, one PostgreSQL system: a node whose data directory has
	// another system identifier is not a replica of this cluster.
	if s.SystemID != 0 && s.SystemID != d.SystemID {
		return refuse("system_id is already %d, not %d", s.SystemID, d.SystemID)
	}
	s.SystemID = d.SystemID
	return nil
}

func applyUpsertMember(s *State, d UpsertMemberData) error {
	m := d.Member
	if m.Name == "" {
		return refuse("member name is empty")
	}
	if m.PGPort < 0 || m.PGPort > 65535 {
		return refuse("member %s: pg_port %d out of range", m.Name, m.PGPort)
	}
	s.Members[m.Name] = m
	return nil
}

func applyRemoveMember(s *State, d RemoveMemberData) error {
	if d.Name == "" {
		return refuse("member name is empty")
	}
	if d.Name == s.Primary {
		return refuse("member %s is the primary (epoch %d); switch over first", d.Name, s.Epoch)
	}
	// Removing an absent member succeeds, so a caller may retry after an
	// Apply whose outcome it could not learn.
	delete(s.Members, d.Name)
	delete(s.TagOverrides, d.Name)
	delete(s.ScheduledRestarts, d.Name)
	s.SyncStandbys = slices.DeleteFunc(s.SyncStandbys, func(n string) bool { return n == d.Name })
	return nil
}

func applyPromote(s *State, d PromoteData) error {
	if !s.Initialized() {
		return refuse("promote %s: cluster is not initialised", d.Primary)
	}
	// Every promotion carries a new, higher epoch, exactly one above the
	// committed one: a decision made on an older state cannot win the race
	// against one made on the newer state (DESIGN: "Decisions are committed
	// first").
	if d.Epoch != s.Epoch+1 {
		return refuse("promote %s at epoch %d: stale, current epoch is %d (want %d)", d.Primary, d.Epoch, s.Epoch, s.Epoch+1)
	}
	if _, ok := s.Members[d.Primary]; !ok {
		return refuse("promote %s: not a member", d.Primary)
	}
	if d.SyncStandbys != nil {
		if err := checkSyncSet(s, d.Primary, d.SyncStandbys); err != nil {
			return refuse("promote %s: %v", d.Primary, err)
		}
	}
	if d.Timeline != 0 && d.Timeline <= s.Timeline {
		return refuse("promote %s onto timeline %d: timelines up to %d are taken", d.Primary, d.Timeline, s.Timeline)
	}
	s.History = append(s.History, Promotion{Epoch: d.Epoch, Timeline: d.Timeline, Primary: d.Primary, PromotionRecord: d.Record})
	if over := len(s.History) - historyLimit; over > 0 {
		s.History = slices.Delete(s.History, 0, over)
	}
	s.Primary = d.Primary
	s.Epoch = d.Epoch
	s.Switchover = Switchover{} // a promotion ends any switchover
	if d.Timeline != 0 {
		s.Timeline = d.Timeline
	}
	if d.SyncStandbys != nil {
		s.SyncStandbys = slices.Clone(d.SyncStandbys)
		return nil
	}
	// The new primary cannot be its own synchronous standby; the rest of the
	// set stays until the leader commits a set for the new epoch.
	s.SyncStandbys = slices.DeleteFunc(s.SyncStandbys, func(n string) bool { return n == d.Primary })
	return nil
}

func applySetPaused(s *State, d SetPausedData) error {
	s.Paused = d.Paused
	return nil
}

func applySetSwitchover(s *State, d SetSwitchoverData) error {
	sw := d.Switchover
	if !sw.Active() {
		s.Switchover = Switchover{}
		return nil
	}
	switch {
	case !s.Initialized():
		return refuse("switchover: cluster is not initialised")
	case sw.Epoch != s.Epoch:
		return refuse("switchover for epoch %d: current epoch is %d", sw.Epoch, s.Epoch)
	case sw.From != s.Primary:
		return refuse("switchover from %s: the primary is %s", sw.From, s.Primary)
	case sw.To == s.Primary:
		return refuse("switchover to %s: it is already the primary", sw.To)
	case s.Switchover.Active():
		return refuse("a switchover to %s is already in progress", s.Switchover.To)
	}
	if _, ok := s.Members[sw.To]; !ok {
		return refuse("switchover to %s: not a member", sw.To)
	}
	s.Switchover = sw
	return nil
}

func applySetTags(s *State, d SetTagsData) error {
	if _, ok := s.Members[d.Member]; !ok {
		return refuse("tag %s: not a member", d.Member)
	}
	o := s.TagOverrides[d.Member]
	for _, k := range slices.Sorted(maps.Keys(d.Tags)) {
		v := d.Tags[k]
		switch k {
		case "nofailover", "nosync", "noloadbalance", "clonefrom":
			var b *bool
			if v != "" {
				parsed, err := strconv.ParseBool(v)
				if err != nil {
					return refuse("tag %s: %s=%q is not true or false", d.Member, k, v)
				}
				b = &parsed
			}
			switch k {
			case "nofailover":
				o.NoFailover = b
			case "nosync":
				o.NoSync = b
			case "clonefrom":
				o.CloneFrom = b
			default:
				o.NoLoadBalance = b
			}
		case "priority":
			var p *int
			if v != "" {
				parsed, err := strconv.Atoi(v)
				if err != nil {
					return refuse("tag %s: priority=%q is not an integer", d.Member, v)
				}
				p = &parsed
			}
			o.Priority = p
		default:
			return refuse("tag %s: unknown tag %q (nofailover, nosync, noloadbalance, clonefrom, priority)", d.Member, k)
		}
	}
	if s.TagOverrides == nil {
		s.TagOverrides = map[string]TagOverride{}
	}
	if o.Empty() {
		delete(s.TagOverrides, d.Member)
	} else {
		s.TagOverrides[d.Member] = o
	}
	return nil
}

func applyScheduleRestart(s *State, d ScheduleRestartData) error {
	if d.Restart.At.IsZero() {
		// Clearing an absent one succeeds: the leader clears before it
		// restarts, and may retry after an Apply whose outcome it lost.
		delete(s.ScheduledRestarts, d.Member)
		return nil
	}
	if _, ok := s.Members[d.Member]; !ok {
		return refuse("schedule a restart of %s: not a member", d.Member)
	}
	if r, ok := s.ScheduledRestarts[d.Member]; ok {
		return refuse("a restart of %s is already scheduled at %s; flush it first", d.Member, r.At.UTC().Format(time.RFC3339))
	}
	if s.ScheduledRestarts == nil {
		s.ScheduledRestarts = map[string]ScheduledRestart{}
	}
	s.ScheduledRestarts[d.Member] = d.Restart
	return nil
}

func applyScheduleSwitchover(s *State, d ScheduleSwitchoverData) error {
	sw := d.Switchover
	if sw.At.IsZero() {
		s.ScheduledSwitchover = ScheduledSwitchover{}
		return nil
	}
	if !s.ScheduledSwitchover.At.IsZero() {
		return refuse("a switchover is already scheduled at %s; flush it first", s.ScheduledSwitchover.At.UTC().Format(time.RFC3339))
	}
	if _, ok := s.Members[sw.From]; !ok || sw.From != s.Primary {
		return refuse("schedule a switchover from %s: not the primary (%s is)", sw.From, s.Primary)
	}
	if _, ok := s.Members[sw.To]; sw.To != "" && (!ok || sw.To == sw.From) {
		return refuse("schedule a switchover to %s: not another member", sw.To)
	}
	s.ScheduledSwitchover = sw
	return nil
}

func applySetConfig(s *State, d SetConfigData) error {
	if d.Base != s.Config.Version {
		return refuse("set config edited from version %d: version %d was committed meanwhile; edit it again", d.Base, s.Config.Version)
	}
	c := d.Config.Clone()
	c.Version = s.Config.Version + 1
	s.Config = c
	return nil
}

// applySettleLeases is a no-op for a version that was replaced meanwhile:
// the newer one carries its own prior fence timeout.
func applySettleLeases(s *State, d SettleLeasesData) error {
	if d.Version == s.Config.Version {
		s.Config.PriorFenceTimeout = 0
	}
	return nil
}

// applyRecordBackup keeps the latest backup: reports may arrive out of
// order (a retried one), and an older one never replaces a newer.
func applyRecordBackup(s *State, d RecordBackupData) error {
	b := d.Backup
	if _, ok := s.Members[b.Member]; !ok {
		return refuse("record backup: no member named %q", b.Member)
	}
	if b.Finished.IsZero() || b.Finished.Before(b.Started) {
		return refuse("record backup: finished %s before it started %s", b.Finished, b.Started)
	}
	if b.Finished.After(s.LastBackup.Finished) {
		s.LastBackup = b
	}
	return nil
}

func applySetSyncStandbys(s *State, d SetSyncStandbysData) error {
	if !s.Initialized() {
		return refuse("set sync standbys: cluster is not initialised")
	}
	if d.Epoch != s.Epoch {
		return refuse("set sync standbys for epoch %d: current epoch is %d", d.Epoch, s.Epoch)
	}
	if err := checkSyncSet(s, s.Primary, d.Names); err != nil {
		return refuse("%v", err)
	}
	s.SyncStandbys = slices.Clone(d.Names)
	return nil
}

// checkSyncSet: every name a member other than the primary, none twice.
func checkSyncSet(s *State, primary string, names []string) error {
	seen := make(map[string]bool, len(names))
	for _, n := range names {
		switch {
		case n == primary:
			return fmt.Errorf("sync standby %s is the primary", n)
		case seen[n]:
			return fmt.Errorf("sync standby %s listed twice", n)
		}
		if _, ok := s.Members[n]; !ok {
			return fmt.Errorf("sync standby %s is not a member", n)
		}
		seen[n] = true
	}
	return nil
}

// fsm is the raft.FSM holding the replica of State.
//
// Concurrency contract (that of hashicorp/raft's FSM interface):
//   - Apply, Snapshot and Restore are called by raft from its single FSM
//     goroutine, never concurrently with each other. They are the only
//     writers of state.
//   - fsmSnapshot.Persist runs on another goroutine, concurrently with
//     Apply; it works on its own deep copy taken in Snapshot.
//   - Readers (state) may call from any goroutine; they get a deep copy
//     taken under mu.RLock. The writers swap a fully built State in under
//     mu.Lock, so a reader never sees a half-applied command.
//   - onChange is called on the FSM goroutine after every change, outside
//     mu; it must not block (Node passes a non-blocking broadcast).
type fsm struct {
	mu       sync.RWMutex
	st       State
	onChange func()
}

var _ raft.FSM = (*fsm)(nil)

func newFSM(onChange func()) *fsm {
	if onChange == nil {
		onChange = func() {}
	}
	return &fsm{st: newState(), onChange: onChange}
}

// state returns a deep copy of the current state.
// config is state().Config without copying the rest.
func (f *fsm) config() ClusterConfig {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.Config.Clone()
}

func (f *fsm) state() State {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.Clone()
}

// Apply applies one committed log entry. It returns nil or an error; raft
// hands the value to the Apply caller on the leader (Node.Apply returns it).
// A refused or unknown command leaves the state untouched.
func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return fmt.Errorf("%w: raft log type %s at index %d", ErrUnknownCommand, l.Type, l.Index)
	}
	c, err := DecodeCommand(l.Data)
	if err != nil {
		return fmt.Errorf("index %d: %w", l.Index, err)
	}
	// Only this goroutine writes f.st, so reading it without the lock is
	// safe here; the lock is taken only to publish the result.
	next := f.st.Clone()
	if err := applyCommand(&next, c); err != nil {
		return err
	}
	next.Index = l.Index
	f.mu.Lock()
	f.st = next
	f.mu.Unlock()
	f.onChange()
	return nil
}

// snapshotFormat is the version of the snapshot encoding written by this
// build. Restore refuses any other value.
const snapshotFormat = 1

type snapshotFile struct {
	Format int   `json:"format"`
	State  State `json:"state"`
}

// Snapshot captures a deep copy of the state; Persist encodes it later.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{st: f.state()}, nil
}

// Restore replaces the state with the one in the snapshot. It decodes into a
// fresh State and swaps it in only if the whole snapshot is valid.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	st, err := decodeSnapshot(b)
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	f.mu.Lock()
	f.st = st
	f.mu.Unlock()
	f.onChange()
	return nil
}

func encodeSnapshot(st State) ([]byte, error) {
	return json.Marshal(snapshotFile{Format: snapshotFormat, State: st})
}

func decodeSnapshot(b []byte) (State, error) {
	// Read the format first, leniently, so that a snapshot from a newer build
	// fails with a message naming the format rather than an unknown field.
	var head struct {
		Format int `json:"format"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return State{}, fmt.Errorf("decode: %w", err)
	}
	if head.Format != snapshotFormat {
		return State{}, fmt.Errorf("unsupported snapshot format %d (this build reads %d)", head.Format, snapshotFormat)
	}
	snap := snapshotFile{State: newState()}
	if err := strictUnmarshal(b, &snap); err != nil {
		return State{}, fmt.Errorf("decode: %w", err)
	}
	if snap.State.Members == nil {
		snap.State.Members = map[string]Member{}
	}
	return snap.State, nil
}

// fsmSnapshot is a point-in-time copy of the state, owned by raft until
// Release. Persist may run concurrently with fsm.Apply.
type fsmSnapshot struct {
	st State
}

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	b, err := encodeSnapshot(s.st)
	if err == nil {
		_, err = sink.Write(b)
	}
	if err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}
