package postgres

import (
	"encoding/binary"
	"fmt"
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
// these 20 bytes lie in its first sector.

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
	return readControlState(filepath.Join(i.cfg.DataDir, "global", "pg_control"))
}

func readControlState(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("read cluster state: %w", err)
	}
	defer f.Close()
	var head [20]byte
	if _, err := io.ReadFull(f, head[:]); err != nil {
		return "", fmt.Errorf("read cluster state from %s: %w", path, err)
	}
	// 13.0 to 16 write 1300, 17 writes 1700; 9.x wrote 9xx. A version this
	// code does not know may have moved the field.
	if v := binary.NativeEndian.Uint32(head[8:12]); v < 900 || v > 1799 {
		return "", fmt.Errorf("read cluster state from %s: pg_control_version %d is not one this agent knows", path, v)
	}
	s := binary.NativeEndian.Uint32(head[16:20])
	if int(s) >= len(controlStates) {
		return "", fmt.Errorf("read cluster state from %s: unknown state %d", path, s)
	}
	return controlStates[s], nil
}
