package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgha/pgha/agent"
)

func votersCmd() *cobra.Command {
	var f apiFlags
	cmd := &cobra.Command{
		Use:   "voters",
		Short: "Show who votes in Raft: voters decide promotions and make the quorum; non-voters stream and serve reads",
		Long: `Show each member's Raft suffrage, as the answering agent's Raft configuration has it.

The initial members (cluster.members) vote. A node added later joins as a
non-voter unless its config sets cluster.voter: true; a non-voter is promoted
only if tagged candidate (or nofailover=false with pgha-agent tag). To take a
member's vote away, remove it (pgha-agent remove) and start its agent again
with cluster.voter: false.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			v, err := fetchView(cmd.Context(), c)
			if err != nil {
				return err
			}
			printVoters(cmd.OutOrStdout(), v)
			return nil
		},
	}
	f.register(cmd, true) // /cluster: with TLS, a certificate or the token
	return cmd
}

func addCmd() *cobra.Command {
	var f apiFlags
	var nonVoter bool
	cmd := &cobra.Command{
		Use:   "add NODE [--nonvoter]",
		Short: "Give a member a Raft vote (or take it away with --nonvoter), in place: nothing restarts",
		Long: `Give a registered member (a node added later joins as a non-voter) a vote in
Raft, or with --nonvoter take a voter's vote away; refused if fewer than three
voters would be left. Its PostgreSQL and agent keep running. Promotion is
separate: a former non-voter stays unpromotable until tagged
(pgha-agent tag NODE nofailover=false). A new node joins by starting its agent.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			method := http.MethodPost
			if nonVoter {
				method = http.MethodDelete
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			var res agent.ControlResult
			err = c.each(func(base string) error {
				return c.call(ctx, method, base+"/members/"+args[0]+"/voter", nil, &res)
			})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), res.Message)
			return nil
		},
	}
	f.register(cmd, true)
	cmd.Flags().BoolVar(&nonVoter, "nonvoter", false, "take the member's vote away instead")
	return cmd
}

func printVoters(w io.Writer, v agent.ClusterView) {
	voters := 0
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "Member\tRaft\tRole\tPromotable")
	for _, m := range v.Members {
		suffrage := m.RaftSuffrage
		switch suffrage {
		case "voter":
			voters++
		case "":
			suffrage = "not in Raft"
		}
		if m.Name == v.RaftLeader {
			suffrage += " (leader)"
		}
		role := m.Role
		if role == "leader" {
			role = "primary" // Patroni's name, beside Raft's leader
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.Name, suffrage, role, yesNo(!m.NoFailover))
	}
	tw.Flush()
	fmt.Fprintf(w, "%d voters: a quorum is %d; the cluster survives the loss of %d of them\n", voters, voters/2+1, (voters-1)/2)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
