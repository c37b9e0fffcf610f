package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pgha/pgha/agent"
)

func historyCmd() *cobra.Command {
	var f apiFlags
	var format string
	cmd := &cobra.Command{
		Use:   "history",
		Short: "Show every promotion: epoch, timeline, LSN, time, old and new primary, kind and reason",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "table" && format != "json" {
				return fmt.Errorf("--format: %q is not table or json", format)
			}
			c, err := f.client()
			if err != nil {
				return err
			}
			h, err := fetchHistory(cmd.Context(), c)
			if err != nil {
				return err
			}
			if format == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(h)
			}
			printHistory(cmd.OutOrStdout(), h)
			return nil
		},
	}
	f.register(cmd, true) // with TLS, /history needs a certificate or the token
	cmd.Flags().StringVar(&format, "format", "table", "table or json")
	return cmd
}

// fetchHistory asks the agents in turn; any member answers for the cluster.
func fetchHistory(ctx context.Context, c *apiClient) ([]agent.HistoryEntry, error) {
	var h []agent.HistoryEntry
	return h, getFirst(ctx, c, "/history", &h)
}

// printHistory prints the promotions as a table, like patronictl history.
func printHistory(w io.Writer, h []agent.HistoryEntry) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "EPOCH\tTL\tLSN\tTIME\tFROM\tNEW PRIMARY\tKIND\tREASON")
	for _, e := range h {
		at := "-"
		if !e.At.IsZero() {
			at = e.At.UTC().Format("2006-01-02 15:04:05.000Z")
		}
		tl := "-"
		if e.Timeline != 0 {
			tl = fmt.Sprint(e.Timeline)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Epoch, tl, orDash(e.LSN), at, orDash(e.From), e.Primary, orDash(e.Kind), orDash(e.Reason))
	}
	tw.Flush()
	if len(h) == 0 {
		fmt.Fprintln(w, "no promotion yet: the first primary has held the role since the cluster began")
	}
}
