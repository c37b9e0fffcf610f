package netns

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// runID is "<prefix>-<pid>-<random>": the pid lets SweepStale tell a dead
// run's leftovers from a live parallel run's namespaces, and the random part
// keeps several topologies of one process apart.
func runID(prefix string) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b) // crypto/rand.Read does not fail on Linux.
	return fmt.Sprintf("%s-%d-%s", prefix, os.Getpid(), hex.EncodeToString(b))
}

// ownerPid extracts the pid from a namespace name made by runID, or 0.
func ownerPid(prefix, name string) int {
	rest, ok := strings.CutPrefix(name, prefix+"-")
	if !ok {
		return 0
	}
	field, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0
	}
	pid, err := strconv.Atoi(field)
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

// alive reports whether a process with this pid exists.
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// SweepStale deletes namespaces named "<prefix>-<pid>-…" whose pid is no
// longer running: leftovers of runs that were killed before their Close.
// Namespaces of live runs, including parallel ones, are left alone. Processes
// still running inside a stale namespace (started there by the dead run) are
// killed first, because the namespace, and its interfaces, would outlive its
// name otherwise.
func SweepStale(prefix string) error {
	names, err := listNamespaces()
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range names {
		pid := ownerPid(prefix, name)
		if pid == 0 || alive(pid) {
			continue
		}
		errs = append(errs, deleteNamespace(name))
	}
	return errors.Join(errs...)
}

// listNamespaces lists the names `ip netns` knows.
func listNamespaces() ([]string, error) {
	entries, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("netns: list namespaces: %w", err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, nil
}

// deleteNamespace kills what runs inside a namespace, then deletes it. A
// namespace that is already gone is not an error.
func deleteNamespace(name string) error {
	if _, err := os.Stat(Path(name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := killInside(name); err != nil {
		return err
	}
	if err := ipCmd("netns", "delete", name); err != nil {
		if _, statErr := os.Stat(Path(name)); errors.Is(statErr, os.ErrNotExist) {
			return nil
		}
		return err
	}
	return nil
}

// killInside SIGKILLs every process in namespace ns, by pid.
func killInside(ns string) error {
	out, err := output("ip", "netns", "pids", ns)
	if err != nil {
		return err
	}
	for _, field := range strings.Fields(out) {
		pid, err := strconv.Atoi(field)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("netns: kill pid %d in %s: %w", pid, ns, err)
		}
	}
	return nil
}
