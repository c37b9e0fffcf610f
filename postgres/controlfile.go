package postgres

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
)

// The cluster state read straight from global/pg_control, for the fence
// (agent/fence.go), which must decide within its margin whether a server
// acknowledges commits: ClusterState runs pg_controldata (a fork and an
// exec, as the postgres user), which a loaded host can take hundreds of
// milliseconds to schedule. The file is PostgreSQL's own record of its
// state: the startup process writes "in production" to it before the
// server accepts its first write, so "in archive recovery" read here means
// the server acknowledges nothing.
//
// ControlFileData starts, in every version since 9.0, with
//
//	uint64 system_identifier; uint32 pg_control_version;
//	uint32 catalog_version_no; DBState state (an int)
//
// in the host's byte order. The file is written whole, 8 kB at a time;
// the fields read here lie in its first sector.

// controlStates are pg_controldata's names for DBState's values.
var controlStates = []string{
	"starting up",
	"shut down",
	"shut down in recovery",
	"shutting down",
	"in crash recovery",
	"in archive recovery",
	"in production",
}

// ClusterStateNow is ClusterState read from global/pg_control itself: no
// process is started, so it answers in microseconds on any host.
func (i *Instance) ClusterStateNow() (string, error) {
	c, err := i.readControl()
	return c.State, err
}

// ShutDownAtNow says, from global/pg_control read in place, whether the
// server is cleanly shut down and where its WAL ends then (its shutdown
// checkpoint: CheckpointLSN). A switchover waits on exactly this, so it
// must not wait for pg_controldata to be scheduled. The shutdown checkpoint
// writes the state and the checkpoint's location in the same update of the
// file, so the two read together agree.
func (i *Instance) ShutDownAtNow() (LSN, bool, error) {
	c, err := i.readControl()
	if err != nil || c.State != "shut down" {
		return 0, false, err
	}
	return c.Checkpoint, true, nil
}

// control is the head of ControlFileData. After the state (offset 16) come
// pg_time_t time (offset 24, 8-aligned) and XLogRecPtr checkPoint (offset
// 32), in every version from 9.3 to 17.
type control struct {
	SystemID   uint64
	State      string
	Checkpoint LSN
}

// readControl reads this instance's global/pg_control in place.
func (i *Instance) readControl() (control, error) {
	return readControl(filepath.Join(i.cfg.DataDir, "global", "pg_control"))
}

func readControl(path string) (control, error) {
	f, err := os.Open(path)
	if err != nil {
		return control{}, fmt.Errorf("read cluster state: %w", err)
	}
	defer f.Close()
	var head [controlMaxSafeSize]byte
	if _, err := io.ReadFull(f, head[:]); err != nil {
		return control{}, fmt.Errorf("read cluster state from %s: %w", path, err)
	}
	if !controlCRCValid(head[:]) {
		// Read while the server rewrote it (reads are not atomic with
		// writes), or damaged: the caller asks again.
		return control{}, fmt.Errorf("read cluster state from %s: no valid CRC in its first %d bytes", path, controlMaxSafeSize)
	}
	// 13.0 to 16 write 1300, 17 writes 1700; 9.x wrote 9xx. A version this
	// code does not know may have moved the field.
	if v := binary.NativeEndian.Uint32(head[8:12]); v < 900 || v > 1799 {
		return control{}, fmt.Errorf("read cluster state from %s: pg_control_version %d is not one this agent knows", path, v)
	}
	s := binary.NativeEndian.Uint32(head[16:20])
	if int(s) >= len(controlStates) {
		return control{}, fmt.Errorf("read cluster state from %s: unknown state %d", path, s)
	}
	return control{
		SystemID:   binary.NativeEndian.Uint64(head[0:8]),
		State:      controlStates[s],
		Checkpoint: LSN(binary.NativeEndian.Uint64(head[32:40])),
	}, nil
}

// controlMaxSafeSize is PG_CONTROL_MAX_SAFE_SIZE: ControlFileData, its CRC
// included, fits in it in every version.
const controlMaxSafeSize = 512

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// controlCRCValid checks ControlFileData's CRC, its last field: CRC-32C of
// every byte before it. Where it lies depends on the version (288 in 15),
// so every 4-aligned offset is tried; a wrong match has odds of about
// 1 in 2^25.
func controlCRCValid(b []byte) bool {
	crc := crc32.New(castagnoli)
	for n := 0; n+4 <= len(b); n += 4 {
		if crc.Sum32() == binary.NativeEndian.Uint32(b[n:n+4]) && n >= 40 {
			return true
		}
		crc.Write(b[n : n+4])
	}
	return false
}
