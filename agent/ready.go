package agent

import "time"

// Ready reports whether this node has joined its cluster (it holds Raft
// state and knows a leader) and its PostgreSQL runs, as primary or standby:
// what systemd's Type=notify waits for before it calls the unit started.
func (a *Agent) Ready() bool {
	node := a.nodeRef.Load()
	if node == nil || !node.HasState() {
		return false
	}
	if leader, _ := node.Leader(); leader == "" {
		return false
	}
	self, ok := a.obs.snapshot()[a.cfg.Name]
	return ok && self.obs.Postgres.Running && time.Since(self.lastSeen) < 5*time.Second
}

// Alive reports whether the reconcile loop still turns, or is busy with a
// long step it announced (initdb, a clone of a large database): the systemd
// watchdog is fed only then, so a hung agent gets restarted and a cloning
// one does not.
func (a *Agent) Alive() bool {
	a.mu.Lock()
	busy := a.activity != ""
	a.mu.Unlock()
	last := a.lastLoop.Load()
	return busy || last == 0 || time.Since(time.Unix(0, last)) < 10*a.timing().LoopInterval+10*time.Second
}
