package netcluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// A full disk. With Options.DataFS, each host's PostgreSQL data directory
// (and its server log beside it) lives on a filesystem of its own, a tmpfs
// mounted at <host>/pgfs: it takes memory only for what is written, and it
// can be shrunk to what it holds (FillDisk) and grown back (FreeDisk) while
// mounted, so a full disk needs no ballast file. What fills up first is
// what a busy server grows: table files (an INSERT fails with "could not
// extend file"; a standby's replay of it stops the standby), new WAL
// segments, temporary files.

// defaultDataFSSize is a data filesystem's size when Options.DataFSSize is
// 0: room for wal_keep_size, max_wal_size and a re-clone beside the old
// copy.
const defaultDataFSSize = 4 << 30

// diskSlack is what FillDisk leaves free: less than one table page, one WAL
// segment, anything a server writes in earnest.
const diskSlack = 4096

func (c *Cluster) dataFSSize() int64 {
	if c.opts.DataFSSize > 0 {
		return c.opts.DataFSSize
	}
	return defaultDataFSSize
}

// mountDataFS mounts h's data filesystem and points PGData and PGLog into it.
func (c *Cluster) mountDataFS(h *Host) error {
	h.DataFS = filepath.Join(h.Dir, "pgfs")
	if err := os.MkdirAll(h.DataFS, 0o755); err != nil {
		return err
	}
	opts := fmt.Sprintf("size=%d,mode=0755,uid=%d,gid=%d", c.dataFSSize(), c.runAs.Uid, c.runAs.Gid)
	if err := syscall.Mount("tmpfs", h.DataFS, "tmpfs", 0, opts); err != nil {
		return fmt.Errorf("%s: mount a tmpfs at %s: %w", h.Name, h.DataFS, err)
	}
	h.mounted = true
	h.PGData = filepath.Join(h.DataFS, "pgdata")
	h.PGLog = h.PGData + ".log" // where the agent's pg_ctl -l puts it
	return nil
}

// unmountDataFS detaches h's data filesystem (its content is gone); the
// caller has stopped PostgreSQL.
func (c *Cluster) unmountDataFS(h *Host) error {
	if !h.mounted {
		return nil
	}
	if err := syscall.Unmount(h.DataFS, syscall.MNT_DETACH); err != nil {
		return fmt.Errorf("%s: unmount %s: %w", h.Name, h.DataFS, err)
	}
	h.mounted = false
	return nil
}

// FillDisk leaves h's data filesystem (Options.DataFS) no free space: it is
// shrunk to what it holds plus diskSlack.
func (c *Cluster) FillDisk(h *Host) error {
	if !h.mounted {
		return fmt.Errorf("%s: no data filesystem of its own (netcluster.Options.DataFS)", h.Name)
	}
	var err error
	// The server writes on meanwhile: a size below what it holds by then
	// is refused (EINVAL), so measure again and retry.
	for range 20 {
		var st syscall.Statfs_t
		if err = syscall.Statfs(h.DataFS, &st); err != nil {
			return fmt.Errorf("%s: statfs %s: %w", h.Name, h.DataFS, err)
		}
		used := int64(st.Blocks-st.Bfree) * st.Bsize
		if err = remount(h.DataFS, used+diskSlack); err == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("%s: shrink %s: %w", h.Name, h.DataFS, err)
}

// FreeDisk gives h's data filesystem its full size back.
func (c *Cluster) FreeDisk(h *Host) error {
	if !h.mounted {
		return nil
	}
	if err := remount(h.DataFS, c.dataFSSize()); err != nil {
		return fmt.Errorf("%s: grow %s back: %w", h.Name, h.DataFS, err)
	}
	return nil
}

// DiskFree is the free space of h's data filesystem in bytes.
func (c *Cluster) DiskFree(h *Host) (int64, error) {
	if !h.mounted {
		return 0, errors.New("no data filesystem of its own")
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(h.DataFS, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}

func remount(dir string, size int64) error {
	return syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_REMOUNT, fmt.Sprintf("size=%d", size))
}

// HasDataFS reports whether the cluster was built with Options.DataFS.
func (c *Cluster) HasDataFS() bool { return c.opts.DataFS }
