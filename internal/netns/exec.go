package netns

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	linuxns "github.com/vishvananda/netns"
)

// Path is the file of the named namespace, where `ip netns add` mounts it.
func Path(ns string) string { return filepath.Join("/run/netns", ns) }

// Command prepares name with args to run inside namespace ns (through
// `ip netns exec`, which execs it: the process's pid is the command's own).
// The caller starts, waits for and, if need be, kills it; Close also kills
// whatever runs inside the topology's namespaces (a process that has not yet
// entered its namespace when Close runs is the caller's to stop).
func Command(ns, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// Run runs args[0] with args[1:] inside namespace ns and returns its
// combined output. The error includes the output.
func Run(ns string, args ...string) (string, error) {
	if len(args) == 0 {
		return "", errors.New("netns: Run without a command")
	}
	out, err := Command(ns, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s: %w: %s", ns, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// output runs a command and returns its standard output; on failure the
// error names the command and carries its standard error.
func output(name string, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "),
			err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Do runs fn on an OS thread that has entered namespace ns, and waits for it.
// Sockets and other namespace-bound descriptors that fn opens stay in ns for
// their whole life, so a test can net.Listen or net.Dial "from" a node
// without a helper process. Goroutines that fn starts do not inherit the
// namespace.
func Do(ns string, fn func() error) error {
	target, err := linuxns.GetFromPath(Path(ns))
	if err != nil {
		return fmt.Errorf("netns: open %s: %w", ns, err)
	}
	defer target.Close()

	// A fresh goroutine owns the switched thread: if switching back fails,
	// it exits still locked, and the runtime discards the thread instead of
	// running other goroutines in the wrong namespace.
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := linuxns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("netns: current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := linuxns.Set(target); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("netns: enter %s: %w", ns, err)
			return
		}
		fnErr := fn()
		if err := linuxns.Set(orig); err != nil {
			done <- errors.Join(fnErr, fmt.Errorf("netns: leave %s: %w", ns, err))
			return
		}
		runtime.UnlockOSThread()
		done <- fnErr
	}()
	return <-done
}

// Sysctl sets a network sysctl inside namespace ns, e.g.
// Sysctl(ns, "net.ipv4.conf.all.arp_accept", "1"). Keys use dots; an
// interface name containing a dot is not supported.
func Sysctl(ns, key, value string) error {
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	// /proc/sys/net shows the namespace of the thread that opens it.
	err := Do(ns, func() error { return os.WriteFile(path, []byte(value), 0o644) })
	if err != nil {
		return fmt.Errorf("netns: sysctl %s=%s in %s: %w", key, value, ns, err)
	}
	return nil
}

// ReadSysctl reads a network sysctl inside namespace ns.
func ReadSysctl(ns, key string) (string, error) {
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	var value []byte
	err := Do(ns, func() (err error) { value, err = os.ReadFile(path); return err })
	if err != nil {
		return "", fmt.Errorf("netns: sysctl %s in %s: %w", key, ns, err)
	}
	return strings.TrimSpace(string(value)), nil
}
