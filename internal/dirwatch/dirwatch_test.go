package dirwatch

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// await waits for a signal on Changed, failing after a generous bound: the
// event is delivered by the kernel at once, the bound only keeps a broken
// watch from hanging the test.
func await(t *testing.T, w *Watch, what string) {
	t.Helper()
	select {
	case <-w.Changed():
	case <-time.After(5 * time.Second):
		t.Fatalf("no signal after %s", what)
	}
}

// quiet checks that no signal is pending.
func quiet(t *testing.T, w *Watch, after string) {
	t.Helper()
	select {
	case <-w.Changed():
		t.Fatalf("a signal after %s, which changes no entry", after)
	default:
	}
}

func TestWatchSignalsEntryChanges(t *testing.T) {
	dir := t.TempDir()
	w, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	quiet(t, w, "the start")

	f := filepath.Join(dir, "standby.signal")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	await(t, w, "a file was created")
	// Reading or rewriting a file in place changes no entry: a loop woken
	// by this watch does not wake for every write to the directory.
	if _, err := os.ReadFile(f); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A file created and removed after those: its signals arrive after any
	// the writes above would have sent, so one pending now was theirs.
	probe := filepath.Join(dir, "probe")
	os.WriteFile(probe, nil, 0o600)
	await(t, w, "the probe was created")
	quiet(t, w, "reading and rewriting a file")

	if err := os.Remove(f); err != nil {
		t.Fatal(err)
	}
	await(t, w, "a file was removed")
	if err := os.Rename(probe, filepath.Join(dir, "renamed")); err != nil {
		t.Fatal(err)
	}
	await(t, w, "a file was renamed")
	if w.Gone() {
		t.Fatal("the watch ended while its directory exists")
	}
}

// A directory renamed away or removed is not the one the caller asked
// for: the watch ends and says so, and the caller watches the path anew.
func TestWatchEndsWithItsDirectory(t *testing.T) {
	for name, remove := range map[string]func(string) error{
		"removed": os.RemoveAll,
		"renamed": func(d string) error { return os.Rename(d, d+".old") },
	} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pgdata")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			w, err := New(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			if err := remove(dir); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for !w.Gone() {
				if time.Now().After(deadline) {
					t.Fatal("the watch did not end")
				}
				await(t, w, "the directory went")
			}
		})
	}
}

func TestWatchOfMissingDirectoryFails(t *testing.T) {
	if _, err := New(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("watching a missing directory succeeded")
	}
}

func TestCloseEndsTheWatch(t *testing.T) {
	w, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	await(t, w, "Close")
	if !w.Gone() {
		t.Fatal("a closed watch is not gone")
	}
}
