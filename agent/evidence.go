package agent

import (
	"github.com/pgha/pgha/recovery"
)

// Evidence: a re-clone (pg_rewind impossible or failing, a diverged standby,
// an operator's reinit) replaces a data directory that may hold the only
// copy of whatever a fault made diverge. recovery.ReinitKeeping keeps it
// aside as <data_dir>.pgha-replaced-<time>, at most
// postgres.keep_replaced_data_dirs of them and only while the file system
// keeps room for another clone plus keepMargin; the kept paths are logged
// and published in the observation, so /cluster and `pgha-agent list` show
// them until the operator removes them.

// keepMargin is the free space left beyond another clone of the data
// directory before kept copies are removed: a full disk stops PostgreSQL
// and the next clone, which is worse than losing old evidence.
const keepMargin = 1 << 30

func (a *Agent) keepReplaced() recovery.Keep {
	n := DefaultKeepReplacedDataDirs
	if p := a.cfg.Postgres.KeepReplacedDataDirs; p != nil {
		n = *p
	}
	return recovery.Keep{Max: n, Margin: keepMargin}
}

// logKept logs what a re-clone did with the data directory it replaced:
// one line per kept or removed copy, as these are the only record of
// where the evidence went.
func (a *Agent) logKept(k recovery.Kept, why string) {
	for _, r := range k.Removed {
		a.log.Warn("removed a kept data directory", "path", r, "reason", "postgres.keep_replaced_data_dirs or free space: another clone must fit")
	}
	switch {
	case k.Path != "":
		a.log.Warn("kept the replaced data directory aside; pgha never uses it, remove it when done", "path", k.Path, "replaced_because", why)
	case k.Note != "":
		a.log.Warn("the replaced data directory was removed", "reason", k.Note, "replaced_because", why)
	}
}

// keptDataDirs lists the kept copies beside this node's data directory, for
// its observation; nil if none or unreadable.
func (a *Agent) keptDataDirs() []string {
	kept, err := recovery.KeptCopies(a.cfg.Postgres.DataDir)
	if err != nil {
		return nil
	}
	return kept
}
