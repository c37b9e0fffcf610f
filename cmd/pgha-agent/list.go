package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgha/pgha/agent"
)

// defaultAPIs are the demo's agents; any member answers for the cluster.
var defaultAPIs = []string{"http://127.0.0.1:8008", "http://127.0.0.1:8009", "http://127.0.0.1:8010"}

func listCmd() *cobra.Command {
	var f apiFlags
	var format string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "Show the cluster: members, roles, states, timelines, LSNs and lag",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "table" && format != "json" {
				return fmt.Errorf("--format: %q is not table or json", format)
			}
			c, err := f.client()
			if err != nil {
				return err
			}
			v, err := fetchView(cmd.Context(), c)
			if err != nil {
				return err
			}
			if format == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(v)
			}
			printView(cmd.OutOrStdout(), v)
			return nil
		},
	}
	f.register(cmd, true) // with TLS, /cluster needs a certificate or the token
	cmd.Flags().StringVar(&format, "format", "table", "table or json")
	return cmd
}

func fetchView(ctx context.Context, c *apiClient) (agent.ClusterView, error) {
	var v agent.ClusterView
	return v, getFirst(ctx, c, "/cluster", &v)
}

// getFirst GETs path from the agents in turn into out; any member answers
// for the cluster, and a dead host must not stall the others.
func getFirst(ctx context.Context, c *apiClient, path string, out any) error {
	if ctx == nil {
		ctx = context.Background()
	}
	var errs []error
	for _, u := range c.apis {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := c.call(cctx, http.MethodGet, strings.TrimRight(u, "/")+path, nil, out)
		cancel()
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return fmt.Errorf("no agent answered: %w", errors.Join(errs...))
}

// printView prints the cluster as a table, like patronictl list / SHOW POOL_NODES.
func printView(w io.Writer, v agent.ClusterView) {
	title := fmt.Sprintf("Cluster: %s", v.Scope)
	if v.ClusterID != "" {
		title += fmt.Sprintf(" (%s)", v.ClusterID[:min(len(v.ClusterID), 12)])
	}
	title += fmt.Sprintf("  epoch %d  raft leader %s", v.Epoch, orDash(v.RaftLeader))
	if v.Pause {
		title += "  [PAUSED: automatic failover is off]"
	}
	fmt.Fprintln(w, title)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "Member\tHost\tRole\tState\tTL\tLSN\tLag (bytes)\tRaft")
	for _, m := range v.Members {
		role := map[string]string{"leader": "Primary", "sync_standby": "Sync Standby", "replica": "Replica"}[m.Role]
		tl, lsn := "", ""
		if m.Timeline != 0 {
			tl = fmt.Sprint(m.Timeline)
		}
		if m.LSN != 0 {
			lsn = m.LSN.String()
		}
		fmt.Fprintf(tw, "%s\t%s:%d\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, m.Host, m.Port, role, m.State, tl, lsn, m.Lag.String(), m.RaftRole)
	}
	tw.Flush()
	for _, p := range v.Problems {
		fmt.Fprintln(w, "  ! "+p)
	}
	for _, m := range v.Members {
		for _, d := range m.KeptDataDirs {
			fmt.Fprintf(w, "  %s keeps a replaced data directory: %s\n", m.Name, d)
		}
		if len(m.PendingRestart) > 0 {
			fmt.Fprintf(w, "  %s needs a restart for: %s\n", m.Name, strings.Join(m.PendingRestart, ", "))
		}
		if sr := m.ScheduledRestart; sr != nil {
			pending := ""
			if sr.Pending {
				pending = " if a setting is pending then"
			}
			fmt.Fprintf(w, "  %s restart scheduled at %s%s (pgha-agent flush restart cancels it)\n", m.Name, sr.At.UTC().Format(time.RFC3339), pending)
		}
		if m.CallbackProblem != "" {
			fmt.Fprintf(w, "  %s callback failed: %s\n", m.Name, m.CallbackProblem)
		}
	}
	if sw := v.ScheduledSwitchover; sw != nil {
		to := sw.To
		if to == "" {
			to = "the best standby then"
		}
		fmt.Fprintf(w, "  switchover scheduled at %s: %s -> %s (pgha-agent flush cancels it)\n", sw.At.UTC().Format(time.RFC3339), sw.From, to)
	}
	for _, m := range v.Members {
		if b := m.Backup; b != nil && b.Running {
			fmt.Fprintf(w, "  %s is taking a %s backup (started %s)\n", m.Name, b.Tool, b.Started.UTC().Format(time.RFC3339))
		} else if b != nil && b.Error != "" {
			fmt.Fprintf(w, "  %s backup failed at %s: %s\n", m.Name, b.Finished.UTC().Format(time.RFC3339), b.Error)
		}
	}
	if b := v.LastBackup; b != nil {
		where := "primary"
		if b.FromStandby {
			where = "standby"
		}
		fmt.Fprintf(w, "  last backup: %s (%s, on %s as %s, took %s)\n", b.Finished.UTC().Format(time.RFC3339), b.Tool, b.Member, where, b.Finished.Sub(b.Started).Round(time.Second))
	}
	if v.Waiting != "" {
		fmt.Fprintln(w, "  leader: "+v.Waiting)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func removeCmd() *cobra.Command {
	var f apiFlags
	cmd := &cobra.Command{
		Use:   "remove NODE",
		Short: "Remove a member from the cluster (its slot is dropped, its agent stops its PostgreSQL and exits)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err = c.each(func(base string) error {
				return c.call(ctx, http.MethodDelete, base+"/members/"+args[0], nil, nil)
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", args[0])
			return nil
		},
	}
	f.register(cmd, true)
	return cmd
}
