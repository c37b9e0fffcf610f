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
	"github.com/pgha/pgha/examples/localcluster"
)

// defaultAPIs are the demo's agents; any member answers for the cluster.
var defaultAPIs = []string{"http://127.0.0.1:8008", "http://127.0.0.1:8009", "http://127.0.0.1:8010"}

func listCmd() *cobra.Command {
	var apis []string
	var format string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "Show the cluster: members, roles, states, timelines, LSNs and lag",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "table" && format != "json" {
				return fmt.Errorf("--format: %q is not table or json", format)
			}
			v, err := fetchView(cmd.Context(), apis)
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
	cmd.Flags().StringSliceVar(&apis, "api", defaultAPIs, "agent REST URLs to ask, first that answers wins")
	cmd.Flags().StringVar(&format, "format", "table", "table or json")
	return cmd
}

func fetchView(ctx context.Context, apis []string) (agent.ClusterView, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	var errs []error
	for _, u := range apis {
		v, err := localcluster.FetchView(ctx, strings.TrimRight(u, "/"))
		if err == nil {
			return v, nil
		}
		errs = append(errs, err)
	}
	return agent.ClusterView{}, fmt.Errorf("no agent answered: %w", errors.Join(errs...))
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
	var apis []string
	cmd := &cobra.Command{
		Use:   "remove NODE",
		Short: "Remove a member from the cluster (its slot is dropped, its agent stops its PostgreSQL and exits)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var errs []error
			for _, u := range apis {
				err := deleteMember(strings.TrimRight(u, "/"), args[0])
				if err == nil {
					fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", args[0])
					return nil
				}
				errs = append(errs, err)
			}
			return errors.Join(errs...)
		},
	}
	cmd.Flags().StringSliceVar(&apis, "api", defaultAPIs, "agent REST URLs to ask")
	return cmd
}

func deleteMember(api, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, api+"/members/"+name, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return fmt.Errorf("%s: %s: %s", api, resp.Status, e.Error)
	}
	return nil
}
