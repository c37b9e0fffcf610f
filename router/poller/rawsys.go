package poller

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawRead and rawWrite are read(2) and write(2) without the Go runtime's
// entersyscall and exitsyscall: the sockets are non-blocking, so the call
// never waits, and the poller goroutine keeps its P. Through unix.Read a
// write that wakes the peer, and is preempted by it on return, leaves the P
// marked "in a system call" long enough for sysmon to notice, keep its
// 20 µs polling rate and sometimes hand the P to another thread: measured
// on the -S benchmark, about one extra thread sleep and wake-up in ten
// transactions.
func rawRead(fd int, b []byte) (int, error)  { return rawIO(unix.SYS_READ, fd, b) }
func rawWrite(fd int, b []byte) (int, error) { return rawIO(unix.SYS_WRITE, fd, b) }

func rawIO(trap uintptr, fd int, b []byte) (int, error) {
	p := unsafe.Pointer(&zero)
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	n, _, e := unix.RawSyscall(trap, uintptr(fd), uintptr(p), uintptr(len(b)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

var zero uintptr
