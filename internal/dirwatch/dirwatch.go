// Package dirwatch tells a loop that the entries of one directory changed
// (a file created, removed or renamed in it), so the loop can sleep instead
// of polling the directory. Linux inotify; the events carry no data the
// caller trusts: each one is only a reason to look again.
package dirwatch

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// entryEvents are the changes to a directory's entries; selfEvents end the
// watch (the directory was removed or renamed: it is not the one asked for).
const (
	entryEvents = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO
	selfEvents  = unix.IN_DELETE_SELF | unix.IN_MOVE_SELF
)

// Watch reports changes to the entries of one directory.
type Watch struct {
	file    *os.File
	changed chan struct{}
	gone    atomic.Bool
}

// New watches dir. It fails when dir does not exist or inotify is not
// available (out of instances or watches): the caller then polls.
func New(dir string) (*Watch, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, entryEvents|selfEvents|unix.IN_ONLYDIR); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watch %s: %w", dir, err)
	}
	// A non-blocking descriptor in an os.File is served by the runtime's
	// poller: the reading goroutine costs nothing while nothing happens.
	w := &Watch{file: os.NewFile(uintptr(fd), "inotify:"+dir), changed: make(chan struct{}, 1)}
	go w.read()
	return w, nil
}

// Changed receives a signal after the directory's entries changed. Signals
// coalesce: one pending signal stands for any number of changes.
func (w *Watch) Changed() <-chan struct{} { return w.changed }

// Gone reports whether the watch ended: the directory was removed or
// renamed, or the watch was closed. Changed gets a signal when that happens.
func (w *Watch) Gone() bool { return w.gone.Load() }

// Close ends the watch.
func (w *Watch) Close() error { return w.file.Close() }

func (w *Watch) read() {
	defer w.signal()
	defer w.gone.Store(true)
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := w.file.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				w.file.Close()
			}
			return
		}
		end := false
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			if ev.Mask&(selfEvents|unix.IN_IGNORED) != 0 {
				end = true
			}
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
		if end {
			w.file.Close()
			return
		}
		w.signal()
	}
}

func (w *Watch) signal() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}
