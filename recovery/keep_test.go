package recovery

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// keepFixture is a data directory of size bytes beside which replaced copies
// (each also size bytes) are kept, on a pretend file system of total bytes.
type keepFixture struct {
	t       *testing.T
	dataDir string
	size    int
	clock   time.Time
}

func newKeepFixture(t *testing.T, size int) *keepFixture {
	f := &keepFixture{t: t, dataDir: filepath.Join(t.TempDir(), "data"), size: size, clock: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)}
	f.fill(f.dataDir, "current")
	return f
}

func (f *keepFixture) fill(dir, marker string) {
	f.t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "marker"), []byte(marker+strings.Repeat(".", f.size-len(marker))), 0o600); err != nil {
		f.t.Fatal(err)
	}
}

// keep replaces a data directory holding marker, as Reinit's step 5 does,
// a minute after the last one.
func (f *keepFixture) keep(k Keep, total int64, marker string) Kept {
	f.t.Helper()
	old := f.dataDir + OldSuffix
	f.fill(old, marker)
	f.clock = f.clock.Add(time.Minute)
	k.now = func() time.Time { return f.clock }
	k.free = func(dir string) (int64, error) { return total - dirSize(dir), nil }
	res, err := k.keepAside(f.dataDir, old)
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		f.t.Errorf("%s still there: %v", old, err)
	}
	return res
}

// markers are the markers of the kept copies, oldest first.
func (f *keepFixture) markers() []string {
	f.t.Helper()
	copies, err := KeptCopies(f.dataDir)
	if err != nil {
		f.t.Fatal(err)
	}
	var out []string
	for _, c := range copies {
		if !strings.HasPrefix(filepath.Base(c), "data"+KeptInfix) {
			f.t.Errorf("kept copy %s not named <data dir>%s<time>", c, KeptInfix)
		}
		b, err := os.ReadFile(filepath.Join(c, "marker"))
		if err != nil {
			f.t.Fatal(err)
		}
		out = append(out, strings.TrimRight(string(b), "."))
	}
	return out
}

func TestKeepAsideBounded(t *testing.T) {
	const size = 1000
	t.Run("at most Max copies, the oldest removed first", func(t *testing.T) {
		f := newKeepFixture(t, size)
		for i, m := range []string{"first", "second", "third"} {
			res := f.keep(Keep{Max: 2}, 1<<40, m)
			if res.Path == "" || !strings.HasSuffix(res.Path, f.clock.Format(keptTimeFormat)) || res.Note != "" {
				t.Errorf("%s: kept %+v", m, res)
			}
			if wantRemoved := i == 2; wantRemoved != (len(res.Removed) == 1) {
				t.Errorf("%s: removed %v", m, res.Removed)
			}
		}
		if got := strings.Join(f.markers(), ","); got != "second,third" {
			t.Errorf("kept %s, want second,third", got)
		}
	})
	t.Run("free space: older copies go first", func(t *testing.T) {
		f := newKeepFixture(t, size)
		// Room for the data dir, one copy and another clone: not two copies.
		const total = 3*size + size/2
		f.keep(Keep{Max: 3}, total, "first")
		res := f.keep(Keep{Max: 3}, total, "second")
		if res.Path == "" || len(res.Removed) != 1 || !strings.Contains(res.Removed[0], KeptInfix) {
			t.Errorf("kept %+v; want the second kept and the first removed", res)
		}
		if got := strings.Join(f.markers(), ","); got != "second" {
			t.Errorf("kept %s, want second", got)
		}
	})
	t.Run("free space: not even the new copy fits", func(t *testing.T) {
		f := newKeepFixture(t, size)
		res := f.keep(Keep{Max: 1, Margin: size}, 3*size, "only")
		if res.Path != "" || res.Note == "" || len(res.Removed) != 1 {
			t.Errorf("kept %+v; want not kept, with a note", res)
		}
		if got := f.markers(); len(got) != 0 {
			t.Errorf("kept %v, want nothing", got)
		}
	})
	t.Run("same second: a second name", func(t *testing.T) {
		f := newKeepFixture(t, size)
		a := f.keep(Keep{Max: 2}, 1<<40, "a")
		f.clock = f.clock.Add(-time.Minute)
		b := f.keep(Keep{Max: 2}, 1<<40, "b")
		if a.Path == b.Path || b.Path != a.Path+"-2" {
			t.Errorf("paths %s and %s", a.Path, b.Path)
		}
		if got := strings.Join(f.markers(), ","); got != "a,b" {
			t.Errorf("kept %s, want a,b (oldest first)", got)
		}
	})
	t.Run("prune before a clone frees room for it", func(t *testing.T) {
		f := newKeepFixture(t, size)
		f.keep(Keep{Max: 2}, 1<<40, "first")
		f.keep(Keep{Max: 2}, 1<<40, "second")
		k := Keep{Max: 2, free: func(dir string) (int64, error) { return 3*size + size/2 - dirSize(dir), nil }}
		removed, err := k.prune(f.dataDir, k.Max)
		if err != nil || len(removed) != 1 {
			t.Errorf("prune = %v, %v; want the oldest removed", removed, err)
		}
		if got := strings.Join(f.markers(), ","); got != "second" {
			t.Errorf("kept %s, want second", got)
		}
	})
}
