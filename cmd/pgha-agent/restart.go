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
	var scheduled string
	cmd := &cobra.Command{
		Use:   "restart [NODE...] [--role primary|replica|any] [--pending] [--no-switchover] [--scheduled TIME]",
		Short: "Restart PostgreSQL on members, standbys first, the primary by a switchover",
		Long: `Restart PostgreSQL on the named members (all without names): the standbys
one at a time, each streaming again before the next, then the primary by a
switchover to a healthy standby, after which the old primary starts again
as a standby. Writes through the router wait during the switchover instead
of failing. --no-switchover restarts the primary in place (writes
unavailable meanwhile; the leader does not fail it over). --pending
restarts only members with settings pending a restart (list shows them).

With --scheduled TIME (as switchover's) the restarts are kept in Raft and
run by whichever agent leads then: the standbys one at a time, the primary
last and in place (so --no-switchover is required for it); --pending is
then judged at that time. list shows them; pgha-agent flush restart
cancels them.`,
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
					pending && scheduled == "" && len(m.PendingRestart) == 0,
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
			if scheduled != "" {
				return scheduleRestarts(cmd, &f, scheduled, pending, noSwitchover, standbys, primary)
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
	cmd.Flags().StringVar(&scheduled, "scheduled", "", "restart at this time instead of now (kept in Raft)")
	f.register(cmd, true)
	return cmd
}

// scheduleRestarts asks for a restart of each member at the time when.
func scheduleRestarts(cmd *cobra.Command, f *apiFlags, when string, pending, inPlace bool, standbys []string, primary string) error {
	at, err := parseWhen(when)
	if err != nil {
		return err
	}
	if primary != "" && !inPlace {
		return fmt.Errorf("%s is the primary: a scheduled restart of it is in place (writes unavailable meanwhile); add --no-switchover, leave it out (--role replica), or schedule a switchover", primary)
	}
	names := standbys
	if primary != "" {
		names = append(names, primary)
	}
	if len(names) == 0 {
		fmt.Fprintln(cmd.OutOrStdout(), "nothing to restart")
		return nil
	}
	for _, name := range names {
		req := agent.ControlRequest{Member: name, At: &at, Pending: pending, InPlace: name == primary}
		if err := control(cmd, f, "/restart", req); err != nil {
			return err
		}
	}
	return nil
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
