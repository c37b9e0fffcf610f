package localcluster

import (
	"os/exec"
	"slices"
	"strconv"
	"testing"
	"time"
)

// TestKillTree: a host kill leaves none of the postmaster's children, even
// when they are not in its process group (a shell that forks and waits
// stands in for the postmaster).
func TestKillTree(t *testing.T) {
	cmd := exec.Command("sh", "-c", "sleep 300 & sleep 300 & wait")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	parent := cmd.Process.Pid
	var children []int
	for deadline := time.Now().Add(10 * time.Second); len(children) < 2; {
		if time.Now().After(deadline) {
			t.Fatalf("children of %d: %v, want 2", parent, children)
		}
		time.Sleep(10 * time.Millisecond)
		children = childPIDs(parent)
	}
	killTree(parent)
	<-done
	for _, c := range children {
		for deadline := time.Now().Add(10 * time.Second); alive(c) && !zombie(c); {
			if time.Now().After(deadline) {
				t.Fatalf("child %d of the killed process still runs", c)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if slices.Contains(children, parent) {
		t.Fatalf("childPIDs(%d) lists the parent itself: %v", parent, children)
	}
}

// zombie: pid has exited and waits for its (new) parent to reap it.
func zombie(pid int) bool {
	out, err := exec.Command("ps", "-o", "stat=", "-p", strconv.Itoa(pid)).Output()
	return err != nil || len(out) > 0 && out[0] == 'Z'
}
