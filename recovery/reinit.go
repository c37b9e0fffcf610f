package recovery

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/pgha/pgha/postgres"
)

// OldSuffix names the sibling <dataDir>.pgha-old that holds the replaced
// data directory while Reinit swaps the clone in.
const OldSuffix = ".pgha-old"

// Reinit replaces the data directory dataDir with a fresh clone of src
// (pg_basebackup, as Clone), passing each output line to progress (which may
// be nil; called as by Rewind). The caller has stopped PostgreSQL; a postmaster running on
// dataDir is refused.
//
// Invariant: no data is deleted before its replacement is in place. The
// steps:
//
//  1. Finish or undo a swap that a crash interrupted (see below).
//  2. Clone into <dataDir>.pgha-clone-tmp (a stale one is removed first).
//  3. Put the node's own configuration files (see keptFiles) and
//     standby.signal into the clone (see Rewind for both).
//  4. Rename dataDir to <dataDir>.pgha-old, then the clone to dataDir.
//  5. Remove <dataDir>.pgha-old (ReinitKeeping may keep it aside instead)
//     and a leftover <dataDir>.pgha-rewinding.
//
// A failure in steps 1 to 4 leaves dataDir as it was, with no temporary
// directory behind. A failure to remove the old copy in step 5 is reported
// through progress (the new data directory is in place; the next Reinit
// removes the leftover).
//
// A crash between the renames of step 4 leaves no dataDir and a
// <dataDir>.pgha-old: the next call renames it back first. A crash before
// the removal in step 5 leaves both: the next call removes
// <dataDir>.pgha-old if it is the same system (system identifier) as the
// valid dataDir, and refuses otherwise, leaving both for the operator.
//
// dataDir may be missing or empty (Reinit then just clones) or a valid data
// directory. Anything else is refused and left alone, and so is a dataDir
// that is a mount point (it cannot be renamed; use a subdirectory of the
// mount as the data directory). As with Rewind, the caller runs
// postgres.Instance.Configure afterwards.
func Reinit(ctx context.Context, binDir, dataDir string, src Source, runAs string, progress func(line string)) error {
	_, err := ReinitKeeping(ctx, binDir, dataDir, src, runAs, Keep{}, progress)
	return err
}

// ReinitKeeping is Reinit that keeps the replaced data directory aside
// instead of removing it, within keep's bounds (see Keep), also when it
// finishes a swap a crash interrupted. What it kept and removed is in the
// result, also when the error is not nil (the clone is then in place or not
// as for Reinit).
func ReinitKeeping(ctx context.Context, binDir, dataDir string, src Source, runAs string, keep Keep, progress func(line string)) (Kept, error) {
	res, err := reinit(ctx, binDir, dataDir, src, runAs, keep, progress)
	if err != nil {
		return res, fmt.Errorf("reinit %s from %s: %w", dataDir, src.Describe(), err)
	}
	return res, nil
}

func reinit(ctx context.Context, binDir, dataDir string, src Source, runAs string, keep Keep, progress func(string)) (res Kept, err error) {
	if progress == nil {
		progress = func(string) {}
	}
	if err := src.validate(); err != nil {
		return res, err
	}
	if dataDir == "" {
		return res, errors.New("data directory is required")
	}
	dataDir, err = filepath.Abs(dataDir)
	if err != nil {
		return res, err
	}
	parent := filepath.Dir(dataDir)
	old := dataDir + OldSuffix
	// dispose gets rid of a replaced data directory: kept aside if keep
	// says so, else removed.
	dispose := func(old string) error {
		if keep.Max <= 0 {
			return os.RemoveAll(old)
		}
		k, err := keep.keepAside(dataDir, old)
		res.Path, res.Note = k.Path, k.Note
		res.Removed = append(res.Removed, k.Removed...)
		return err
	}

	// 1. A swap a crash interrupted.
	if err := resolveOld(dataDir, old, dispose, progress); err != nil {
		return res, err
	}

	st, err := postgres.DataDirStateOf(dataDir)
	if err != nil {
		return res, err
	}
	switch {
	case st == postgres.DataDirInvalid:
		return res, errors.New("refusing: the path is not a PostgreSQL data directory (no PG_VERSION and global/pg_control); nothing was changed")
	case st != postgres.DataDirMissing && isMountPoint(dataDir):
		return res, errors.New("refusing: the data directory is a mount point and cannot be renamed; use a subdirectory of the mount as the data directory")
	}
	if err := refuseRunning(dataDir); err != nil {
		return res, err
	}
	var kept []keptFile
	if st == postgres.DataDirValid {
		if kept, err = readKeptFiles(dataDir); err != nil {
			return res, err
		}
		if keep.Max > 0 {
			// Room for the clone first: older kept copies go before it
			// would fail for want of space.
			removed, err := keep.prune(dataDir, keep.Max)
			res.Removed = append(res.Removed, removed...)
			if err != nil {
				return res, err
			}
		}
	}

	// 2. and 3. The clone, beside dataDir.
	tmp := dataDir + TmpSuffix
	if err := makeTempDir(tmp, runAs); err != nil {
		return res, err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	if err := src.copyInto(ctx, binDir, tmp, runAs, progress); err != nil {
		return res, err
	}
	if err := writeKeptFiles(tmp, kept, runAs); err != nil {
		return res, err
	}
	if err := writeStandbySignal(tmp, runAs); err != nil {
		return res, err
	}

	// 4. The swap. Someone may have started the server meanwhile.
	if err := refuseRunning(dataDir); err != nil {
		return res, err
	}
	moved := false
	if st != postgres.DataDirMissing {
		if err := os.Rename(dataDir, old); err != nil {
			return res, fmt.Errorf("move the old data directory aside: %w", err)
		}
		moved = true
		syncDir(parent)
	}
	if err := os.Rename(tmp, dataDir); err != nil {
		err = fmt.Errorf("move the clone into place: %w", err)
		if moved {
			if backErr := os.Rename(old, dataDir); backErr != nil {
				return res, fmt.Errorf("%w; and put the old data directory back: %v (the next Reinit retries)", err, backErr)
			}
			syncDir(parent)
		}
		return res, err
	}
	ok = true
	syncDir(parent)

	// 5. Only now is the old copy garbage (or evidence, kept aside).
	if moved {
		if err := dispose(old); err != nil {
			progress(fmt.Sprintf("pgha: could not remove or keep aside the replaced data directory %s: %v", old, err))
		}
	}
	if err := removeSynced(dataDir + RewindMarkerSuffix); err != nil {
		progress(fmt.Sprintf("pgha: could not remove %s: %v", dataDir+RewindMarkerSuffix, err))
	}
	syncDir(parent)
	return res, nil
}

// resolveOld deals with a <dataDir>.pgha-old left by an interrupted Reinit:
// with no data in dataDir it goes back into place; next to a valid dataDir
// of the same system it is the replaced copy and goes (dispose: removed or
// kept aside); in any other
// case both are left alone and an error says so.
func resolveOld(dataDir, old string, dispose func(string) error, progress func(string)) error {
	if _, err := os.Lstat(old); errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	st, err := postgres.DataDirStateOf(dataDir)
	if err != nil {
		return err
	}
	switch st {
	case postgres.DataDirMissing, postgres.DataDirEmpty:
		// rename(2) replaces an empty directory; os.Rename would refuse.
		if err := syscall.Rename(old, dataDir); err != nil {
			return fmt.Errorf("put back the data directory an interrupted reinit moved to %s: %w", old, err)
		}
		syncDir(filepath.Dir(dataDir))
		progress(fmt.Sprintf("pgha: put back the data directory an interrupted reinit had moved to %s", old))
		return nil
	case postgres.DataDirValid:
		a, errA := systemID(dataDir)
		b, errB := systemID(old)
		if errA != nil || errB != nil || a != b {
			return fmt.Errorf("refusing: both %s and %s exist and are not the same system (%d vs %d; %v; %v); resolve by hand", dataDir, old, a, b, errA, errB)
		}
		if err := dispose(old); err != nil {
			return fmt.Errorf("remove (or keep aside) the data directory an interrupted reinit replaced: %w", err)
		}
		syncDir(filepath.Dir(dataDir))
		progress(fmt.Sprintf("pgha: removed (or kept aside) %s, the data directory an interrupted reinit had replaced", old))
		return nil
	}
	return fmt.Errorf("refusing: both %s and %s exist and %s is not a data directory; resolve by hand", dataDir, old, dataDir)
}

// systemID reads the database system identifier, the first field of
// global/pg_control (native byte order).
func systemID(dataDir string) (uint64, error) {
	f, err := os.Open(filepath.Join(dataDir, "global", "pg_control"))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var b [8]byte
	if _, err := f.ReadAt(b[:], 0); err != nil {
		return 0, fmt.Errorf("read %s: %w", f.Name(), err)
	}
	return binary.NativeEndian.Uint64(b[:]), nil
}
