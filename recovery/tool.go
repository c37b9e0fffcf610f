package recovery

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// Tool is a backup tool's restore, a clone method besides pg_basebackup
// (Patroni's create_replica_methods): pgBackRest's restore, WAL-G's
// backup-fetch. It fills an empty directory with the latest backup; the
// standby started on it then fetches the WAL since the backup from the
// archive (restore_command) until it can stream.
type Tool struct {
	// Name is the tool's name, for messages: "pgbackrest", "wal-g".
	Name string
	// Path is its program, looked up in PATH when not absolute.
	Path string
	// Args are its arguments; DataDirArg inside any of them is replaced
	// by the directory restored into.
	Args []string
	// Env are extra environment variables (NAME=VALUE).
	Env []string
}

// DataDirArg stands for the directory a Tool restores into.
const DataDirArg = "{data_dir}"

// args are t's arguments for a restore into dir.
func (t *Tool) args(dir string) []string {
	out := make([]string, len(t.Args))
	for i, a := range t.Args {
		out[i] = strings.ReplaceAll(a, DataDirArg, dir)
	}
	return out
}

func (t *Tool) validate() error {
	switch {
	case t.Name == "":
		return errors.New("backup tool: Name is required")
	case t.Path == "":
		return fmt.Errorf("backup tool %s: Path is required", t.Name)
	}
	if !strings.Contains(strings.Join(t.Args, " "), DataDirArg) {
		return fmt.Errorf("backup tool %s: no argument names the directory to restore into (%s)", t.Name, DataDirArg)
	}
	return nil
}

// resolve is the absolute path of t's program (exec.LookPath when it has
// no slash), so a tool missing here fails before anything is touched.
func (t *Tool) resolve() (string, error) {
	if strings.Contains(t.Path, "/") {
		return filepath.Abs(t.Path)
	}
	p, err := exec.LookPath(t.Path)
	if err != nil {
		return "", fmt.Errorf("backup tool %s: %w", t.Name, err)
	}
	return p, nil
}

// restore runs t into dir, which exists, is empty and belongs to runAs,
// passing each output line to progress. On failure dir holds a partial
// copy the caller removes.
func (t *Tool) restore(ctx context.Context, dir, runAs string, progress func(string)) error {
	path, err := t.resolve()
	if err != nil {
		return err
	}
	_, err = runToolEnv(ctx, runAs, path, t.args(dir), t.Env, progress)
	return err
}
