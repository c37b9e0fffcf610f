package postgres

// Helpers for code that works on a data directory without an Instance
// (recovery.Rewind and recovery.Reinit run while PostgreSQL is stopped and
// only know the path).

// DataDirStateOf classifies dir like Instance.DataDirState.
func DataDirStateOf(dir string) (DataDirState, error) { return dataDirState(dir) }

// PostmasterPIDOf is Instance.PostmasterPID for the data directory dataDir:
// the PID in its postmaster.pid if that process exists, else 0.
func PostmasterPIDOf(dataDir string) (int, error) {
	return (&Instance{cfg: Config{DataDir: dataDir}}).PostmasterPID()
}
