package recovery

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// KeptInfix names the siblings <dataDir>.pgha-replaced-<UTC time, to the nanosecond> that hold
// data directories ReinitKeeping replaced and kept aside.
const KeptInfix = ".pgha-replaced-"

// keptTimeFormat sorts as the time does (fixed width, to the nanosecond, so
// copies kept within one second keep their order), and has no character a shell or a
// file system minds.
const keptTimeFormat = "20060102T150405.000000000Z"

// Keep says whether ReinitKeeping keeps the data directory it replaces.
//
// A re-clone after rewinds failed replaces the only copy of whatever a fault
// made diverge. Kept aside as <dataDir>.pgha-replaced-<UTC time, to the nanosecond> (a rename
// beside the data directory, so on the same file system: nothing is copied)
// it can still be examined or salvaged by hand. pgha never reads, starts nor
// re-adopts a kept copy; it only removes the oldest ones to stay within
// these bounds, newest copies winning:
//
//  1. At most Max copies are kept (0: none, as Reinit).
//  2. Copies are kept only while the file system has room for another clone
//     of the data directory (its size now) plus Margin bytes: before a clone
//     and after keeping a copy the oldest copies are removed until it has,
//     the copy just made last of all. A full disk would otherwise stop the
//     next clone, which is worse than losing old evidence.
//
// Every removal is reported (Kept.Removed), so the caller logs it.
type Keep struct {
	Max    int
	Margin int64

	// Test hooks (package recovery's own tests): the clock and the free
	// space of the file system holding a directory.
	now  func() time.Time
	free func(dir string) (int64, error)
}

// Kept is what ReinitKeeping did with replaced data directories.
type Kept struct {
	Path    string   // where the replaced data directory was kept; "" if it was not
	Removed []string // older kept copies removed to stay within Keep's bounds
	Note    string   // why the replaced data directory was not kept, if Keep.Max > 0 and it was not
}

// KeptCopies lists the kept copies of dataDir's replaced data directories,
// oldest first.
func KeptCopies(dataDir string) ([]string, error) {
	dataDir, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(filepath.Dir(dataDir))
	if err != nil {
		return nil, fmt.Errorf("list kept data directories: %w", err)
	}
	prefix := filepath.Base(dataDir) + KeptInfix
	var out []string
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), prefix) {
			out = append(out, filepath.Join(filepath.Dir(dataDir), e.Name()))
		}
	}
	sort.Strings(out)
	return out, nil
}

// keepAside renames old (a replaced data directory) to a new kept copy of
// dataDir, then applies the bounds. It returns what was done; an error
// leaves old where it was (the next Reinit deals with it).
func (k Keep) keepAside(dataDir, old string) (Kept, error) {
	var res Kept
	now := time.Now
	if k.now != nil {
		now = k.now
	}
	base := dataDir + KeptInfix + now().UTC().Format(keptTimeFormat)
	path := base
	for n := 2; ; n++ {
		if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
			break
		}
		path = fmt.Sprintf("%s-%d", base, n)
	}
	if err := os.Rename(old, path); err != nil {
		return res, fmt.Errorf("keep the replaced data directory aside: %w", err)
	}
	syncDir(filepath.Dir(dataDir))
	res.Path = path
	removed, err := k.prune(dataDir, k.Max)
	res.Removed = removed
	for _, r := range removed {
		if r == path {
			res.Path = ""
			res.Note = fmt.Sprintf("not kept: the file system holding %s has less free space than another clone of it needs plus %d bytes", dataDir, k.Margin)
		}
	}
	return res, err
}

// prune removes the oldest kept copies of dataDir until at most max are left
// and the file system has room for a clone of dataDir plus the margin (or no
// copy is left). It returns the copies removed.
func (k Keep) prune(dataDir string, max int) ([]string, error) {
	copies, err := KeptCopies(dataDir)
	if err != nil {
		return nil, err
	}
	var removed []string
	remove := func() error {
		if err := os.RemoveAll(copies[0]); err != nil {
			return fmt.Errorf("remove kept data directory %s: %w", copies[0], err)
		}
		syncDir(filepath.Dir(dataDir))
		removed = append(removed, copies[0])
		copies = copies[1:]
		return nil
	}
	for len(copies) > max {
		if err := remove(); err != nil {
			return removed, err
		}
	}
	need := dirSize(dataDir) + k.Margin
	for len(copies) > 0 {
		free, err := k.freeSpace(filepath.Dir(dataDir))
		if err != nil {
			return removed, err
		}
		if free >= need {
			break
		}
		if err := remove(); err != nil {
			return removed, err
		}
	}
	return removed, nil
}

func (k Keep) freeSpace(dir string) (int64, error) {
	if k.free != nil {
		return k.free(dir)
	}
	var s syscall.Statfs_t
	if err := syscall.Statfs(dir, &s); err != nil {
		return 0, fmt.Errorf("free space of %s: %w", dir, err)
	}
	return int64(s.Bavail) * int64(s.Bsize), nil
}

// dirSize is the bytes of the regular files under dir (0 if it is missing):
// what a clone of it takes, near enough.
func dirSize(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // vanished or unreadable: count what can be counted
		}
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}
