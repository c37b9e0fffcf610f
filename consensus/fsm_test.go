package consensus

import (
	"bytes"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// testFSM applies commands to an fsm as raft would, numbering log entries.
type testFSM struct {
	t       *testing.T
	f       *fsm
	index   uint64
	changes int
}

func newTestFSM(t *testing.T) *testFSM {
	t.Helper()
	tf := &testFSM{t: t}
	tf.f = newFSM(func() { tf.changes++ })
	return tf
}

// applyRaw feeds one raw log entry to the FSM and returns its response.
func (tf *testFSM) applyRaw(data []byte) error {
	tf.t.Helper()
	tf.index++
	res := tf.f.Apply(&raft.Log{Index: tf.index, Term: 1, Type: raft.LogCommand, Data: data})
	if res == nil {
		return nil
	}
	err, ok := res.(error)
	if !ok {
		tf.t.Fatalf("Apply returned %T (%v), want error or nil", res, res)
	}
	return err
}

func (tf *testFSM) apply(c Command) error {
	tf.t.Helper()
	b, err := c.Encode()
	if err != nil {
		tf.t.Fatalf("encode %s: %v", c.Type, err)
	}
	return tf.applyRaw(b)
}

func (tf *testFSM) mustApply(cs ...Command) {
	tf.t.Helper()
	for _, c := range cs {
		if err := tf.apply(c); err != nil {
			tf.t.Fatalf("apply %s: %v", c.Type, err)
		}
	}
}

func member(name string) Member {
	return Member{
		Name:     name,
		RaftAddr: "10.0.0." + name + ":8300",
		APIURL:   "http://10.0.0." + name + ":8008",
		PGHost:   "10.0.0." + name,
		PGPort:   5432,
	}
}

// initialised: members a, b, c; cluster c1 with primary a at epoch 1.
var initialised = []Command{
	UpsertMember(member("a")),
	UpsertMember(member("b")),
	UpsertMember(member("c")),
	InitCluster("c1", "a"),
}

func with(base []Command, more ...Command) []Command {
	return append(append([]Command(nil), base...), more...)
}

func TestFSMCommands(t *testing.T) {
	tests := []struct {
		name    string
		setup   []Command
		cmd     Command
		wantErr error // nil, ErrRefused
		check   func(t *testing.T, s State)
	}{
		{
			name: "init_cluster",
			cmd:  InitCluster("c1", "a"),
			check: func(t *testing.T, s State) {
				if s.ClusterID != "c1" || s.Primary != "a" || s.Epoch != 1 || !s.Initialized() {
					t.Errorf("state = %+v", s)
				}
			},
		},
		{name: "init_cluster twice", setup: initialised, cmd: InitCluster("c2", "b"), wantErr: ErrRefused},
		{name: "init_cluster same args twice", setup: initialised, cmd: InitCluster("c1", "a"), wantErr: ErrRefused},
		{name: "init_cluster empty id", cmd: InitCluster("", "a"), wantErr: ErrRefused},
		{name: "init_cluster empty primary", cmd: InitCluster("c1", ""), wantErr: ErrRefused},
		{
			name: "set_system_id",
			cmd:  SetSystemID(7301),
			check: func(t *testing.T, s State) {
				if s.SystemID != 7301 {
					t.Errorf("SystemID = %d", s.SystemID)
				}
			},
		},
		{name: "set_system_id same value again", setup: []Command{SetSystemID(7301)}, cmd: SetSystemID(7301)},
		{name: "set_system_id conflict", setup: []Command{SetSystemID(7301)}, cmd: SetSystemID(7302), wantErr: ErrRefused},
		{name: "set_system_id zero", cmd: SetSystemID(0), wantErr: ErrRefused},
		{
			name: "upsert_member adds",
			cmd:  UpsertMember(member("a")),
			check: func(t *testing.T, s State) {
				if !reflect.DeepEqual(s.Members, map[string]Member{"a": member("a")}) {
					t.Errorf("Members = %+v", s.Members)
				}
			},
		},
		{
			name:  "upsert_member replaces",
			setup: initialised,
			cmd:   UpsertMember(Member{Name: "b", PGHost: "b.example", PGPort: 6432, NoFailover: true, Priority: 5}),
			check: func(t *testing.T, s State) {
				want := Member{Name: "b", PGHost: "b.example", PGPort: 6432, NoFailover: true, Priority: 5}
				if s.Members["b"] != want || len(s.Members) != 3 {
					t.Errorf("Members = %+v", s.Members)
				}
			},
		},
		{name: "upsert_member empty name", cmd: UpsertMember(Member{PGPort: 5432}), wantErr: ErrRefused},
		{name: "upsert_member bad port", cmd: UpsertMember(Member{Name: "a", PGPort: 70000}), wantErr: ErrRefused},
		{
			name:  "remove_member",
			setup: with(initialised, SetSyncStandbys([]string{"b", "c"}, 1)),
			cmd:   RemoveMember("b"),
			check: func(t *testing.T, s State) {
				if _, ok := s.Members["b"]; ok || len(s.Members) != 2 {
					t.Errorf("Members = %+v", s.Members)
				}
				if !reflect.DeepEqual(s.SyncStandbys, []string{"c"}) {
					t.Errorf("SyncStandbys = %v, want [c]", s.SyncStandbys)
				}
			},
		},
		{name: "remove_member absent is a no-op", setup: initialised, cmd: RemoveMember("zz")},
		{name: "remove_member the primary", setup: initialised, cmd: RemoveMember("a"), wantErr: ErrRefused},
		{name: "remove_member empty name", setup: initialised, cmd: RemoveMember(""), wantErr: ErrRefused},
		{
			name:  "promote",
			setup: with(initialised, SetSyncStandbys([]string{"b", "c"}, 1)),
			cmd:   Promote("b", 2),
			check: func(t *testing.T, s State) {
				if s.Primary != "b" || s.Epoch != 2 {
					t.Errorf("primary %q epoch %d, want b 2", s.Primary, s.Epoch)
				}
				if !reflect.DeepEqual(s.SyncStandbys, []string{"c"}) {
					t.Errorf("SyncStandbys = %v, want [c]", s.SyncStandbys)
				}
			},
		},
		{name: "promote stale epoch", setup: initialised, cmd: Promote("b", 1), wantErr: ErrRefused},
		{name: "promote stale after promotion", setup: with(initialised, Promote("b", 2)), cmd: Promote("c", 2), wantErr: ErrRefused},
		{name: "promote skips an epoch", setup: initialised, cmd: Promote("b", 3), wantErr: ErrRefused},
		{name: "promote a non-member", setup: initialised, cmd: Promote("zz", 2), wantErr: ErrRefused},
		{name: "promote before init", setup: []Command{UpsertMember(member("a"))}, cmd: Promote("a", 1), wantErr: ErrRefused},
		{
			name:  "set_paused",
			setup: initialised,
			cmd:   SetPaused(true),
			check: func(t *testing.T, s State) {
				if !s.Paused {
					t.Error("Paused = false")
				}
			},
		},
		{
			name:  "set_paused false",
			setup: with(initialised, SetPaused(true)),
			cmd:   SetPaused(false),
			check: func(t *testing.T, s State) {
				if s.Paused {
					t.Error("Paused = true")
				}
			},
		},
		{
			name:  "set_sync_standbys",
			setup: initialised,
			cmd:   SetSyncStandbys([]string{"c", "b"}, 1),
			check: func(t *testing.T, s State) {
				if !reflect.DeepEqual(s.SyncStandbys, []string{"c", "b"}) {
					t.Errorf("SyncStandbys = %v", s.SyncStandbys)
				}
			},
		},
		{
			name:  "set_sync_standbys empty",
			setup: with(initialised, SetSyncStandbys([]string{"b"}, 1)),
			cmd:   SetSyncStandbys(nil, 1),
			check: func(t *testing.T, s State) {
				if len(s.SyncStandbys) != 0 {
					t.Errorf("SyncStandbys = %v", s.SyncStandbys)
				}
			},
		},
		{name: "set_sync_standbys stale epoch", setup: with(initialised, Promote("b", 2)), cmd: SetSyncStandbys([]string{"c"}, 1), wantErr: ErrRefused},
		{name: "set_sync_standbys future epoch", setup: initialised, cmd: SetSyncStandbys([]string{"b"}, 2), wantErr: ErrRefused},
		{name: "set_sync_standbys primary", setup: initialised, cmd: SetSyncStandbys([]string{"a"}, 1), wantErr: ErrRefused},
		{name: "set_sync_standbys non-member", setup: initialised, cmd: SetSyncStandbys([]string{"zz"}, 1), wantErr: ErrRefused},
		{name: "set_sync_standbys duplicate", setup: initialised, cmd: SetSyncStandbys([]string{"b", "b"}, 1), wantErr: ErrRefused},
		{name: "set_sync_standbys before init", cmd: SetSyncStandbys(nil, 0), wantErr: ErrRefused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tf := newTestFSM(t)
			tf.mustApply(tt.setup...)
			before := tf.f.state()
			changes := tf.changes

			err := tf.apply(tt.cmd)
			after := tf.f.state()

			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("apply %s: %v", tt.cmd.Type, err)
				}
				if after.Index != tf.index {
					t.Errorf("Index = %d, want %d", after.Index, tf.index)
				}
				if tf.changes != changes+1 {
					t.Errorf("onChange called %d times, want 1", tf.changes-changes)
				}
				if tt.check != nil {
					tt.check(t, after)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("apply %s: err = %v, want %v", tt.cmd.Type, err, tt.wantErr)
			}
			if !reflect.DeepEqual(before, after) {
				t.Errorf("refused command changed state:\nbefore %+v\nafter  %+v", before, after)
			}
			if tf.changes != changes {
				t.Errorf("refused command called onChange")
			}
		})
	}
}

// TestFSMRefusalReasons checks that a refusal says why, for the operator.
func TestFSMRefusalReasons(t *testing.T) {
	tf := newTestFSM(t)
	tf.mustApply(initialised...)
	err := tf.apply(Promote("b", 1))
	if err == nil || !strings.Contains(err.Error(), "stale") || !strings.Contains(err.Error(), "current epoch is 1") {
		t.Errorf("stale promote: err = %v, want a reason naming the stale epoch", err)
	}
}

func TestFSMUnknownCommands(t *testing.T) {
	tests := []struct {
		name string
		data string
	}{
		{"unknown type", `{"type":"frobnicate","version":1,"data":{}}`},
		{"unknown version", `{"type":"promote","version":9,"data":{"primary":"b","epoch":2}}`},
		{"version zero", `{"type":"set_paused","version":0,"data":{"paused":true}}`},
		{"missing type", `{"version":1,"data":{"paused":true}}`},
		{"unknown payload field", `{"type":"set_paused","version":1,"data":{"paused":true,"force":true}}`},
		{"unknown envelope field", `{"type":"set_paused","version":1,"data":{"paused":true},"extra":1}`},
		{"wrong payload type", `{"type":"set_paused","version":1,"data":{"paused":"yes"}}`},
		{"missing data", `{"type":"set_paused","version":1}`},
		{"null data", `{"type":"set_paused","version":1,"data":null}`},
		{"trailing data", `{"type":"set_paused","version":1,"data":{"paused":true}} {}`},
		{"trailing brace", `{"type":"set_paused","version":1,"data":{"paused":true}}}`},
		{"not json", `promote b`},
		{"empty", ``},
		{"json array", `[1,2]`},
		{"binary", "\x00\xff\x13"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := DecodeCommand([]byte(tt.data)); !errors.Is(err, ErrUnknownCommand) {
				t.Errorf("DecodeCommand: err = %v, want ErrUnknownCommand", err)
			}
			tf := newTestFSM(t)
			tf.mustApply(initialised...)
			before := tf.f.state()
			if err := tf.applyRaw([]byte(tt.data)); !errors.Is(err, ErrUnknownCommand) {
				t.Errorf("Apply: err = %v, want ErrUnknownCommand", err)
			}
			if after := tf.f.state(); !reflect.DeepEqual(before, after) {
				t.Errorf("state changed:\nbefore %+v\nafter  %+v", before, after)
			}
		})
	}
}

func TestFSMIgnoresNothing(t *testing.T) {
	tf := newTestFSM(t)
	res := tf.f.Apply(&raft.Log{Index: 1, Type: raft.LogNoop})
	if err, _ := res.(error); !errors.Is(err, ErrUnknownCommand) {
		t.Errorf("Apply(LogNoop) = %v, want ErrUnknownCommand", res)
	}
}

func TestCommandEncodeDecodeRoundTrip(t *testing.T) {
	cmds := []Command{
		InitCluster("c1", "a"),
		SetSystemID(1 << 63),
		UpsertMember(Member{Name: "a", RaftAddr: "r:1", APIURL: "http://a:8008", PGHost: "a", PGPort: 5432, NoFailover: true, Priority: 3}),
		RemoveMember("a"),
		Promote("b", 9),
		PromoteWith("b", 9, []string{"c"}, 4),
		PromoteWith("b", 9, []string{}, 4),
		SetPaused(true),
		SetSyncStandbys([]string{"b", "c"}, 4),
		SetSyncStandbys(nil, 4),
	}
	for _, c := range cmds {
		b, err := c.Encode()
		if err != nil {
			t.Fatalf("encode %s: %v", c.Type, err)
		}
		if !bytes.Contains(b, []byte(`"type":"`+string(c.Type)+`","version":`+strconv.Itoa(c.Version)+`,"data":{`)) {
			t.Errorf("wire form of %s = %s, want the envelope", c.Type, b)
		}
		got, err := DecodeCommand(b)
		if err != nil {
			t.Fatalf("decode %s: %v", c.Type, err)
		}
		if !reflect.DeepEqual(got, c) {
			t.Errorf("round trip of %s:\n got %#v\nwant %#v", c.Type, got, c)
		}
	}
}

func TestCommandEncodeRejects(t *testing.T) {
	tests := []struct {
		name string
		cmd  Command
	}{
		{"unknown type", Command{Type: "frobnicate", Version: 1, Data: struct{}{}}},
		{"unknown version", Command{Type: CmdPromote, Version: 9, Data: PromoteData{Primary: "a", Epoch: 2}}},
		{"zero version", Command{Type: CmdPromote, Data: PromoteData{Primary: "a", Epoch: 2}}},
		{"payload of another type", Command{Type: CmdSetPaused, Version: 1, Data: PromoteData{Primary: "a"}}},
		{"nil payload", Command{Type: CmdSetPaused, Version: 1}},
		{"unencodable payload", Command{Type: CmdSetPaused, Version: 1, Data: make(chan int)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if b, err := tt.cmd.Encode(); err == nil {
				t.Errorf("Encode = %s, want an error", b)
			}
		})
	}
}

// memSink is an in-memory raft.SnapshotSink.
type memSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Close() error  { s.closed = true; return nil }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }

func persist(t *testing.T, f *fsm) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	defer snap.Release()
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	if !sink.closed || sink.cancelled {
		t.Fatalf("sink closed=%v cancelled=%v, want closed", sink.closed, sink.cancelled)
	}
	return sink.Bytes()
}

func restore(f *fsm, b []byte) error {
	return f.Restore(readCloser{bytes.NewReader(b)})
}

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }

func TestFSMSnapshotRestoreRoundTrip(t *testing.T) {
	states := map[string][]Command{
		"empty": nil,
		"full": with(initialised,
			SetSystemID(7301),
			UpsertMember(Member{Name: "d", PGPort: 5433, NoFailover: true, Priority: 2}),
			Promote("b", 2),
			SetSyncStandbys([]string{"c", "a"}, 2),
			SetPaused(true),
		),
	}
	for name, cmds := range states {
		t.Run(name, func(t *testing.T) {
			src := newTestFSM(t)
			src.mustApply(cmds...)
			b := persist(t, src.f)

			// Snapshot is a copy: applying after it does not change it.
			src.mustApply(SetPaused(false))

			dst := newTestFSM(t)
			dst.mustApply(InitCluster("other", "x")) // Restore replaces, not merges
			if err := restore(dst.f, b); err != nil {
				t.Fatalf("Restore: %v", err)
			}
			want := newTestFSM(t)
			want.mustApply(cmds...)
			if got := dst.f.state(); !reflect.DeepEqual(got, want.f.state()) {
				t.Errorf("restored state:\n got %+v\nwant %+v", got, want.f.state())
			}
			if dst.changes != 2 {
				t.Errorf("onChange calls = %d, want 2 (apply + restore)", dst.changes)
			}
		})
	}
}

func TestFSMRestoreRejects(t *testing.T) {
	src := newTestFSM(t)
	src.mustApply(initialised...)
	good := string(persist(t, src.f))

	tests := []struct {
		name, data, wantMsg string
	}{
		{"garbage", "\x00garbage", "decode"},
		{"empty", "", "decode"},
		{"future format", strings.Replace(good, `"format":1`, `"format":2`, 1), "format 2"},
		{"no format", `{"state":{"cluster_id":"c1"}}`, "format 0"},
		{"unknown state field", strings.Replace(good, `"cluster_id"`, `"leader_lease":1,"cluster_id"`, 1), "unknown field"},
		{"truncated", good[:len(good)/2], "decode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := newTestFSM(t)
			dst.mustApply(SetPaused(true))
			before := dst.f.state()
			err := restore(dst.f, []byte(tt.data))
			if err == nil || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("Restore: err = %v, want one mentioning %q", err, tt.wantMsg)
			}
			if after := dst.f.state(); !reflect.DeepEqual(before, after) {
				t.Errorf("failed restore changed state: %+v", after)
			}
		})
	}
}

func TestStateClone(t *testing.T) {
	tf := newTestFSM(t)
	tf.mustApply(with(initialised, SetSyncStandbys([]string{"b"}, 1))...)
	s := tf.f.state()
	c := s.Clone()
	if !reflect.DeepEqual(s, c) {
		t.Fatalf("clone differs:\n%+v\n%+v", s, c)
	}
	c.Members["zz"] = Member{Name: "zz"}
	c.SyncStandbys[0] = "zz"
	if _, ok := s.Members["zz"]; ok || s.SyncStandbys[0] != "b" {
		t.Error("clone shares memory with the original")
	}
	// A copy from the FSM is private too.
	s.Members["yy"] = Member{}
	if _, ok := tf.f.state().Members["yy"]; ok {
		t.Error("State() shares memory with the FSM")
	}
	if (State{}).Clone().Members != nil {
		t.Error("clone of a nil map is not nil")
	}
}

func TestBroadcasterCoalesces(t *testing.T) {
	var b broadcaster
	ch, cancel := b.subscribe()
	b.notify()
	b.notify() // must not block: coalesced
	<-ch
	select {
	case <-ch:
		t.Fatal("two signals for coalesced notifies")
	default:
	}
	cancel()
	cancel() // idempotent
	b.notify()
	select {
	case <-ch:
		t.Fatal("signal after unsubscribe")
	default:
	}
}

func TestLeaderFanoutKeepsLatest(t *testing.T) {
	var l leaderFanout
	a, b := l.subscribe(), l.subscribe()
	if v := <-a; v {
		t.Fatal("primed with true, want false")
	}
	l.publish(true)
	l.publish(false)
	l.publish(true) // never blocks; a holds only the latest
	if v := <-a; !v {
		t.Error("a: got false, want latest true")
	}
	// b still holds its primed value's replacement: the latest, true.
	if v := <-b; !v {
		t.Error("b: got false, want latest true")
	}
	l.publish(true) // no change, no signal
	select {
	case v := <-a:
		t.Errorf("signal %v without a change", v)
	default:
	}
}

func TestFSMSwitchover(t *testing.T) {
	tf := newTestFSM(t)
	tf.mustApply(initialised...)
	refused := []struct {
		name string
		sw   Switchover
	}{
		{"wrong epoch", Switchover{From: "a", To: "b", Epoch: 7}},
		{"not from the primary", Switchover{From: "b", To: "c", Epoch: 1}},
		{"to the primary", Switchover{From: "a", To: "a", Epoch: 1}},
		{"to a non-member", Switchover{From: "a", To: "z", Epoch: 1}},
	}
	for _, r := range refused {
		if err := tf.apply(SetSwitchover(r.sw)); !errors.Is(err, ErrRefused) {
			t.Errorf("%s: err = %v, want ErrRefused", r.name, err)
		}
	}
	sw := Switchover{From: "a", To: "b", Epoch: 1}
	tf.mustApply(SetSwitchover(sw))
	if err := tf.apply(SetSwitchover(Switchover{From: "a", To: "c", Epoch: 1})); !errors.Is(err, ErrRefused) {
		t.Errorf("a second switchover was accepted: %v", err)
	}
	// The state records it until the promotion.
	st := tf.f.state()
	if st.Switchover != sw {
		t.Fatalf("switchover = %+v, want %+v", st.Switchover, sw)
	}
	// The promotion ends it.
	tf.mustApply(Promote("b", 2))
	if st := tf.f.state(); st.Switchover.Active() || st.Primary != "b" {
		t.Fatalf("after promote: %+v", st)
	}
	// A zero switchover cancels (and is harmless when none is active).
	tf.mustApply(SetSwitchover(Switchover{}))
}

// A version-2 promotion commits the new epoch's synchronous set and reserves
// a timeline above every earlier one; version 1 keeps the old behaviour.
func TestFSMPromoteWithSyncSetAndTimeline(t *testing.T) {
	tf := newTestFSM(t)
	tf.mustApply(initialised...)
	tf.mustApply(SetSyncStandbys([]string{"b"}, 1))
	tf.mustApply(PromoteWith("b", 2, []string{"c"}, 2))
	st := tf.f.state()
	if st.Primary != "b" || st.Epoch != 2 || !reflect.DeepEqual(st.SyncStandbys, []string{"c"}) || st.Timeline != 2 {
		t.Fatalf("after promote v2: %+v", st)
	}
	for _, r := range []struct {
		name string
		cmd  Command
	}{
		{"a timeline already taken", PromoteWith("c", 3, []string{"a"}, 2)},
		{"the new primary in its own set", PromoteWith("c", 3, []string{"c"}, 3)},
		{"a non-member in the set", PromoteWith("c", 3, []string{"z"}, 3)},
		{"a name twice", PromoteWith("c", 3, []string{"a", "a"}, 3)},
	} {
		if err := tf.apply(r.cmd); !errors.Is(err, ErrRefused) {
			t.Errorf("%s: err = %v, want ErrRefused", r.name, err)
		}
	}
	if st := tf.f.state(); st.Epoch != 2 {
		t.Fatalf("a refused promotion changed the state: %+v", st)
	}
	// An empty set is a set, not version 1's "keep the old one".
	tf.mustApply(SetSyncStandbys([]string{"a"}, 2))
	tf.mustApply(PromoteWith("c", 3, []string{}, 5))
	if st := tf.f.state(); len(st.SyncStandbys) != 0 || st.Timeline != 5 {
		t.Fatalf("after promote with an empty set: %+v", st)
	}
	// Version 1: the old set minus the new primary, the timeline untouched.
	tf.mustApply(SetSyncStandbys([]string{"a", "b"}, 3))
	if err := tf.applyRaw([]byte(`{"type":"promote","version":1,"data":{"primary":"a","epoch":4}}`)); err != nil {
		t.Fatalf("promote v1: %v", err)
	}
	if st := tf.f.state(); !reflect.DeepEqual(st.SyncStandbys, []string{"b"}) || st.Timeline != 5 {
		t.Fatalf("after promote v1: %+v", st)
	}
	// Version 1 payloads with version 2's fields are malformed.
	if err := tf.applyRaw([]byte(`{"type":"promote","version":1,"data":{"primary":"b","epoch":5,"timeline":9}}`)); !errors.Is(err, ErrUnknownCommand) {
		t.Errorf("v1 with a timeline: err = %v, want ErrUnknownCommand", err)
	}
}

// Every committed promotion is kept in History with its record, oldest
// first and at most historyLimit; a refused one leaves no entry. Version 2
// payloads carry no record.
func TestFSMPromotionHistory(t *testing.T) {
	tf := newTestFSM(t)
	tf.mustApply(initialised...)
	at := time.Date(2026, 12, 6, 7, 0, 0, 0, time.UTC)
	rec := PromotionRecord{Kind: "switchover", From: "a", Reason: "operator asked", At: at, LSN: 0x3000060}
	tf.mustApply(PromoteRecorded("b", 2, []string{"c"}, 2, rec))
	if err := tf.apply(PromoteRecorded("c", 2, nil, 3, rec)); !errors.Is(err, ErrRefused) {
		t.Fatalf("stale promotion: %v", err)
	}
	want := []Promotion{{Epoch: 2, Timeline: 2, Primary: "b", PromotionRecord: rec}}
	if got := tf.f.state().History; !reflect.DeepEqual(got, want) {
		t.Fatalf("history %+v, want %+v", got, want)
	}
	// Through the wire form too: the time survives the round trip.
	snap := tf.f.state()
	if b, err := PromoteRecorded("c", 3, nil, 3, rec).Encode(); err != nil || !bytes.Contains(b, []byte(`"reason":"operator asked"`)) {
		t.Fatalf("encoded record: %s %v", b, err)
	}
	if err := tf.applyRaw([]byte(`{"type":"promote","version":2,"data":{"primary":"c","epoch":3,"record":{"kind":"failover"}}}`)); !errors.Is(err, ErrUnknownCommand) {
		t.Errorf("v2 with a record: err = %v, want ErrUnknownCommand", err)
	}
	if got := tf.f.state(); !reflect.DeepEqual(got.History, snap.History) {
		t.Fatalf("a malformed promotion changed the history: %+v", got.History)
	}
	for epoch := uint64(3); epoch < 3+historyLimit+5; epoch++ {
		next := []string{"a", "b", "c"}[epoch%3]
		tf.mustApply(PromoteRecorded(next, epoch, nil, 0, PromotionRecord{Kind: "failover", Reason: strconv.FormatUint(epoch, 10)}))
	}
	h := tf.f.state().History
	if len(h) != historyLimit || h[len(h)-1].Epoch != 2+historyLimit+5 || h[0].Epoch != h[len(h)-1].Epoch-historyLimit+1 {
		t.Fatalf("history of %d entries, epochs %d..%d; want the last %d", len(h), h[0].Epoch, h[len(h)-1].Epoch, historyLimit)
	}
	c := tf.f.state()
	c.History[0].Reason = "changed"
	if tf.f.state().History[0].Reason == "changed" {
		t.Error("State() shares the history with the FSM")
	}
}

// The cluster-wide configuration changes only from the version it was
// edited from; each committed change gets the next version, whatever the
// command said.
func TestFSMSetConfig(t *testing.T) {
	tf := newTestFSM(t)
	tf.mustApply(initialised...)
	tf.mustApply(SetConfig(0, ClusterConfig{Version: 99, Parameters: map[string]string{"work_mem": "8MB"}}))
	st := tf.f.state()
	if st.Config.Version != 1 || st.Config.Parameters["work_mem"] != "8MB" {
		t.Fatalf("config %+v, want version 1 with work_mem", st.Config)
	}
	if err := tf.apply(SetConfig(0, ClusterConfig{})); !errors.Is(err, ErrRefused) {
		t.Fatalf("an edit of version 0 after version 1: %v", err)
	}
	tf.mustApply(SetConfig(1, ClusterConfig{Parameters: map[string]string{"work_mem": "16MB"}}))
	c := tf.f.state()
	if c.Config.Version != 2 || c.Config.Parameters["work_mem"] != "16MB" {
		t.Fatalf("config %+v", c.Config)
	}
	c.Config.Parameters["work_mem"] = "changed"
	if tf.f.state().Config.Parameters["work_mem"] != "16MB" {
		t.Error("State() shares the configuration with the FSM")
	}

	// Timing and failover travel with it; a prior fence timeout stays
	// until settled for its own version only.
	tf.mustApply(SetConfig(2, ClusterConfig{Timing: &Timing{FenceTimeout: time.Second}, Failover: &Failover{SynchronousMode: true}, PriorFenceTimeout: 5 * time.Second}))
	c = tf.f.state()
	if c.Config.Version != 3 || c.Config.Timing.FenceTimeout != time.Second || !c.Config.Failover.SynchronousMode || c.Config.PriorFenceTimeout != 5*time.Second {
		t.Fatalf("config %+v", c.Config)
	}
	c.Config.Timing.FenceTimeout = time.Hour
	if tf.f.state().Config.Timing.FenceTimeout != time.Second {
		t.Error("State() shares the timing with the FSM")
	}
	tf.mustApply(SettleLeases(2))
	if tf.f.state().Config.PriorFenceTimeout != 5*time.Second {
		t.Error("settling an older version cleared the prior fence timeout of version 3")
	}
	tf.mustApply(SettleLeases(3))
	if c := tf.f.state().Config; c.PriorFenceTimeout != 0 || c.Version != 3 {
		t.Errorf("after settling version 3: %+v", c)
	}
}

// A switchover scheduled for later is kept until flushed (or started): one
// at a time, from the primary, to another member.
func TestFSMScheduleSwitchover(t *testing.T) {
	tf := newTestFSM(t)
	tf.mustApply(initialised...)
	at := time.Date(2026, 12, 24, 3, 0, 0, 0, time.UTC)
	for _, bad := range []ScheduledSwitchover{{At: at, From: "b"}, {At: at, From: "a", To: "a"}, {At: at, From: "a", To: "z"}} {
		if err := tf.apply(ScheduleSwitchover(bad)); !errors.Is(err, ErrRefused) {
			t.Errorf("%+v: %v, want refused", bad, err)
		}
	}
	tf.mustApply(ScheduleSwitchover(ScheduledSwitchover{At: at, From: "a", To: "b"}))
	if got := tf.f.state().ScheduledSwitchover; !got.At.Equal(at) || got.To != "b" {
		t.Fatalf("scheduled %+v", got)
	}
	if err := tf.apply(ScheduleSwitchover(ScheduledSwitchover{At: at.Add(time.Hour), From: "a"})); !errors.Is(err, ErrRefused) {
		t.Errorf("a second schedule: %v, want refused", err)
	}
	tf.mustApply(ScheduleSwitchover(ScheduledSwitchover{}))
	if got := tf.f.state().ScheduledSwitchover; !got.At.IsZero() {
		t.Fatalf("after flush: %+v", got)
	}
}

// Scheduled restarts: one per member, of members only; a zero one clears
// it (absent or not); removing the member removes its schedule.
func TestFSMScheduleRestart(t *testing.T) {
	tf := newTestFSM(t)
	tf.mustApply(initialised...)
	tf.mustApply(UpsertMember(member("b")))
	at := time.Date(2026, 12, 24, 3, 0, 0, 0, time.UTC)
	if err := tf.apply(ScheduleRestart("z", ScheduledRestart{At: at})); !errors.Is(err, ErrRefused) {
		t.Errorf("a restart of a non-member: %v, want refused", err)
	}
	tf.mustApply(ScheduleRestart("b", ScheduledRestart{At: at, Pending: true}))
	tf.mustApply(ScheduleRestart("a", ScheduledRestart{At: at.Add(time.Hour)}))
	if got := tf.f.state().ScheduledRestarts; len(got) != 2 || !got["b"].At.Equal(at) || !got["b"].Pending || got["a"].Pending {
		t.Fatalf("scheduled %+v", got)
	}
	if err := tf.apply(ScheduleRestart("b", ScheduledRestart{At: at.Add(time.Minute)})); !errors.Is(err, ErrRefused) {
		t.Errorf("a second restart of b: %v, want refused", err)
	}
	tf.mustApply(ScheduleRestart("a", ScheduledRestart{}))
	tf.mustApply(ScheduleRestart("a", ScheduledRestart{})) // again: nothing to clear
	tf.mustApply(RemoveMember("b"))
	if got := tf.f.state().ScheduledRestarts; len(got) != 0 {
		t.Fatalf("after flushing a and removing b: %+v", got)
	}
}

// Run-time tags override a member's registered ones in what State shows,
// and removing one brings the registered value back; bad keys or values
// are refused and change nothing.
func TestFSMSetTags(t *testing.T) {
	tf := newTestFSM(t)
	b := member("b")
	b.Priority = 3
	tf.mustApply(initialised...)
	tf.mustApply(UpsertMember(b))
	tf.mustApply(SetTags("b", map[string]string{"nofailover": "true", "priority": "9"}))
	st := tf.f.state().withTagOverrides()
	if m := st.Members["b"]; !m.NoFailover || m.Priority != 9 {
		t.Fatalf("with overrides: %+v", m)
	}
	if m := tf.f.state().Members["b"]; m != b {
		t.Fatalf("the FSM keeps the registered record: %+v, want %+v", m, b)
	}
	for _, bad := range []map[string]string{{"nofailover": "maybe"}, {"priority": "high"}, {"color": "red"}} {
		if err := tf.apply(SetTags("b", bad)); !errors.Is(err, ErrRefused) {
			t.Errorf("%v: %v, want refused", bad, err)
		}
	}
	if err := tf.apply(SetTags("z", map[string]string{"nosync": "true"})); !errors.Is(err, ErrRefused) {
		t.Errorf("a tag on a non-member: %v", err)
	}
	tf.mustApply(SetTags("b", map[string]string{"nofailover": "", "priority": ""}))
	if m := tf.f.state().withTagOverrides().Members["b"]; m != b || len(tf.f.state().TagOverrides) != 0 {
		t.Fatalf("after removing the overrides: %+v (%v), want %+v", m, tf.f.state().TagOverrides, b)
	}
	tf.mustApply(SetTags("c", map[string]string{"noloadbalance": "true"}), RemoveMember("c"))
	if _, ok := tf.f.state().TagOverrides["c"]; ok {
		t.Error("a removed member's overrides are kept")
	}
}

// A finished backup is recorded for a member; a report older than the one
// recorded (a retry that arrives late) changes nothing; the archive and
// backup settings travel with the configuration and are copied, not shared.
func TestFSMRecordBackupAndArchive(t *testing.T) {
	tf := newTestFSM(t)
	tf.mustApply(initialised...)
	at := time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)
	rec := BackupRecord{Member: "a", Tool: "pgbackrest", Started: at, Finished: at.Add(time.Minute), FromStandby: true}
	for _, bad := range []BackupRecord{{Member: "z", Started: at, Finished: at}, {Member: "a", Started: at, Finished: at.Add(-time.Second)}, {Member: "a"}} {
		if err := tf.apply(RecordBackup(bad)); !errors.Is(err, ErrRefused) {
			t.Errorf("%+v: %v, want refused", bad, err)
		}
	}
	tf.mustApply(RecordBackup(rec))
	older := rec
	older.Started, older.Finished = at.Add(-time.Hour), at.Add(-time.Minute)
	tf.mustApply(RecordBackup(older))
	if got := tf.f.state().LastBackup; !got.Finished.Equal(rec.Finished) || got.Tool != "pgbackrest" || !got.FromStandby {
		t.Errorf("last backup %+v, want %+v", got, rec)
	}
	b, err := RecordBackup(rec).Encode()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := DecodeCommand(b); err != nil || !reflect.DeepEqual(got, RecordBackup(rec)) {
		t.Errorf("round trip: %#v %v", got, err)
	}

	tf.mustApply(SetConfig(0, ClusterConfig{
		Archive: &ArchiveSettings{ArchiveMode: "on", ArchiveCommand: "cp %p /a/%f", RestoreCommand: "cp /a/%f %p"},
		Backup:  &BackupSettings{Tool: "pgbackrest", Options: []string{"--config=/x"}, CloneMethods: []string{"pgbackrest", "basebackup"}},
	}))
	c := tf.f.state()
	if c.Config.Archive.ArchiveMode != "on" || c.Config.Backup.CloneMethods[0] != "pgbackrest" {
		t.Fatalf("config %+v", c.Config)
	}
	c.Config.Archive.ArchiveMode = "off"
	c.Config.Backup.CloneMethods[0] = "changed"
	if s := tf.f.state(); s.Config.Archive.ArchiveMode != "on" || s.Config.Backup.CloneMethods[0] != "pgbackrest" {
		t.Error("State() shares the archive or backup settings with the FSM")
	}
}
