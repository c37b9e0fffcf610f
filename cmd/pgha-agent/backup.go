package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgha/pgha/agent"
)

func backupCmd() *cobra.Command {
	var f apiFlags
	var noWait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "backup [NODE]",
		Short: "Take a backup with the configured tool (pgBackRest, WAL-G) on a standby, or on NODE",
		Long: `Take a backup with the cluster's backup tool (backup.tool in show-config:
pgbackrest runs "pgbackrest --stanza=S backup", with --backup-standby on a
standby; wal-g runs "wal-g backup-push"). Without NODE the Raft leader picks
the standby that streams from the primary with the least lag, or the
primary when no standby is healthy. The command waits until the backup has
finished (--no-wait returns once it has started); list shows the last
backup's time.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			var req agent.ControlRequest
			if len(args) == 1 {
				req.Member = args[0]
			}
			body, _ := json.Marshal(req)
			asked := time.Now()
			var res agent.ControlResult
			err = c.each(func(base string) error {
				return c.call(cmd.Context(), http.MethodPost, base+"/backup", body, &res)
			})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), res.Message)
			if noWait || res.Member == "" {
				return nil
			}
			return followBackup(cmd, c, res.Member, asked, timeout)
		},
	}
	f.register(cmd, true)
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the backup has started")
	cmd.Flags().DurationVar(&timeout, "timeout", 24*time.Hour, "how long to wait for the backup to finish")
	return cmd
}

// followBackup waits until the backup name's agent started after asked has
// finished, and says how it ended.
func followBackup(cmd *cobra.Command, c *apiClient, name string, asked time.Time, timeout time.Duration) error {
	out := cmd.OutOrStdout()
	deadline := time.Now().Add(timeout)
	// Clocks of the CLI's host and the member's may differ a little.
	since := asked.Add(-5 * time.Second)
	for time.Now().Before(deadline) {
		v, err := fetchView(cmd.Context(), c)
		if err == nil {
			for _, m := range v.Members {
				b := m.Backup
				if m.Name != name || b == nil || b.Started.Before(since) || b.Running {
					continue
				}
				if b.Error != "" {
					return fmt.Errorf("%s\n%s", b.Error, strings.Join(b.Output, "\n"))
				}
				fmt.Fprintf(out, "backup finished on %s with %s in %s\n", name, b.Tool, b.Finished.Sub(b.Started).Round(time.Second))
				return nil
			}
		}
		select {
		case <-cmd.Context().Done():
			return cmd.Context().Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return errors.New("gave up waiting for the backup to finish; see pgha-agent list")
}
