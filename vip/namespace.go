package vip

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Option adjusts a NetlinkManager beyond its Config.
type Option func(*options)

type options struct {
	nsPath string
}

// InNamespace makes the manager work in the network namespace at path (e.g.
// /run/netns/NAME, or /proc/PID/ns/net) instead of the caller's. Tests use it
// to run several "hosts" in one process; the agent does not, it manages the
// namespace it runs in. The manager keeps the namespace open until Close.
func InNamespace(path string) Option {
	return func(o *options) { o.nsPath = path }
}

// openNamespace opens path, or returns netns.None() for "the caller's".
func openNamespace(path string) (netns.NsHandle, error) {
	if path == "" {
		return netns.None(), nil
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		return netns.None(), fmt.Errorf("vip: open network namespace %s: %w", path, err)
	}
	return h, nil
}

// inNamespace runs fn on an OS thread inside ns, or directly when ns is
// None. A socket keeps the namespace it was created in, so this is only
// needed to open one.
func inNamespace(ns netns.NsHandle, fn func() error) error {
	if !ns.IsOpen() {
		return fn()
	}
	// A fresh goroutine owns the switched thread: if switching back fails,
	// it exits still locked and the runtime discards the thread, instead of
	// running other goroutines in the wrong namespace.
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("vip: current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("vip: enter network namespace: %w", err)
			return
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			done <- errors.Join(fnErr, fmt.Errorf("vip: leave network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		done <- fnErr
	}()
	return <-done
}
