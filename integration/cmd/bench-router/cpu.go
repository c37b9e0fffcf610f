package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of /proc CPU times (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

// groupCPU is the CPU time (user and system, including reaped children)
// of every process in process group pgid: a proxy and, for pgpool-II, its
// children. Zero when /proc is unreadable.
func groupCPU(pgid int) time.Duration {
	var ticks int64
	for _, p := range groupProcs(pgid) {
		for _, k := range p.stat[11:15] {
			n, _ := strconv.ParseInt(k, 10, 64)
			ticks += n
		}
	}
	return time.Duration(ticks) * clockTick
}

// groupProc is a process of a group: its /proc directory and the fields
// of its stat file after the command name (state ppid pgrp ... utime
// stime cutime cstime ...; the name may contain spaces).
type groupProc struct {
	dir  string
	stat []string
}

// groupProcs lists the processes in process group pgid.
func groupProcs(pgid int) []groupProc {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var out []groupProc
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // the process ended meanwhile
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 15 || f[2] != strconv.Itoa(pgid) {
			continue
		}
		out = append(out, groupProc{dir: filepath.Dir(path), stat: f})
	}
	return out
}

// machineCPU returns the busy and total CPU time of the machine so far
// (/proc/stat, all cores).
func machineCPU() (busy, total time.Duration) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 8 || f[0] != "cpu" {
		return 0, 0
	}
	var all, idle int64
	for i, k := range f[1:] {
		if i >= 8 { // guest times are already in user
			break
		}
		n, _ := strconv.ParseInt(k, 10, 64)
		all += n
		if i == 3 || i == 4 { // idle, iowait
			idle += n
		}
	}
	return time.Duration(all-idle) * clockTick, time.Duration(all) * clockTick
}
