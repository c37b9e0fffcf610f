package main

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgha/pgha/agent"
)

// restart is the rolling restart: the standbys one at a time, each
// streaming again before the next, then the primary by a switchover to a
// restarted standby (the old primary stops cleanly and starts again as a
// standby: the restart it needed), or in place with --no-switchover.

func restartCmd() *cobra.Command {
	var f apiFlags
	var role string
	var pending, noSwitchover bool
	cmd := &cobra.Command{
		Use:   "restart [NODE...] [--role primary|replica|any] [--pending] [--no-switchover]",
		Short: "Restart PostgreSQL on members, standbys first, the primary by a switchover",
		Long: `Restart PostgreSQL on the named members (all without names): the standbys
one at a time, each streaming again before the next, then the primary by a
switchover to a healthy standby, after which the old primary starts again
as a standby. Writes through the router wait during the switchover instead
of failing. --no-switchover restarts the primary in place (writes
unavailable meanwhile; the leader does not fail it over). --pending
restarts only members with settings pending a restart (list shows them).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if role != "primary" && role != "replica" && role != "any" {
				return fmt.Errorf("--role: %q is not primary, replica or any", role)
			}
			c, err := f.client()
			if err != nil {
				return err
			}
			v, err := fetchView(cmd.Context(), c)
			if err != nil {
				return err
			}
			for _, a := range args {
				if !slices.ContainsFunc(v.Members, func(m agent.MemberStatus) bool { return m.Name == a }) {
					return fmt.Errorf("no member named %q", a)
				}
			}
			var standbys []string
			primary := ""
			for _, m := range v.Members {
				isPrimary := m.Role == "leader"
				switch {
				case len(args) > 0 && !slices.Contains(args, m.Name),
					pending && len(m.PendingRestart) == 0,
					role == "primary" && !isPrimary,
					role == "replica" && isPrimary:
					continue
				}
				if isPrimary {
					primary = m.Name
				} else {
					standbys = append(standbys, m.Name)
				}
			}
			if len(standbys) == 0 && primary == "" {
				fmt.Fprintln(cmd.OutOrStdout(), "nothing to restart")
				return nil
			}
			for _, name := range standbys {
				if err := control(cmd, &f, "/restart", agent.ControlRequest{Member: name}); err != nil {
					return err
				}
				if err := awaitStreaming(cmd, c, name); err != nil {
					return err
				}
			}
			if primary == "" {
				return nil
			}
			if noSwitchover {
				return control(cmd, &f, "/restart", agent.ControlRequest{Member: primary, InPlace: true})
			}
			if err := control(cmd, &f, "/switchover", agent.ControlRequest{Leader: primary}); err != nil {
				return fmt.Errorf("switchover before restarting %s: %w", primary, err)
			}
			return awaitStreaming(cmd, c, primary)
		},
	}
	cmd.Flags().StringVar(&role, "role", "any", "restart only the primary, only replicas, or any")
	cmd.Flags().BoolVar(&pending, "pending", false, "only members with settings pending a restart")
	cmd.Flags().BoolVar(&noSwitchover, "no-switchover", false, "restart the primary in place instead of switching over")
	f.register(cmd, true)
	return cmd
}

// awaitStreaming waits until name is a standby streaming from the primary.
func awaitStreaming(cmd *cobra.Command, c *apiClient, name string) error {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if v, err := fetchView(cmd.Context(), c); err == nil {
			for _, m := range v.Members {
				if m.Name == name && m.State == "streaming" {
					fmt.Fprintf(cmd.OutOrStdout(), "%s is streaming again\n", name)
					return nil
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.New("gave up waiting for " + name + " to stream again; see pgha-agent list")
}
