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

// The operator's control commands. Each posts to any member's REST API; the
// member forwards what the Raft leader must decide. They authenticate with
// the API token (--token-file) or a certificate from the cluster CA
// (--cert/--key); see client.go.

func switchoverCmd() *cobra.Command {
	var f apiFlags
	var candidate, scheduled string
	cmd := &cobra.Command{
		Use:   "switchover [--candidate NODE] [--scheduled TIME]",
		Short: "Move the primary role to a standby with no data loss (the old primary stops cleanly and follows)",
		Long: `Move the primary role to a standby with no data loss: the old primary
stops cleanly and follows. With --scheduled (RFC 3339, e.g.
2026-12-24T03:00:00Z, or 2026-12-24T03:00 in local time) it is kept in
Raft and started by whichever agent leads at that time; list shows it and
pgha-agent flush cancels it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := agent.ControlRequest{Candidate: candidate}
			if scheduled != "" {
				at, err := parseWhen(scheduled)
				if err != nil {
					return err
				}
				req.At = &at
			}
			return control(cmd, &f, "/switchover", req)
		},
	}
	cmd.Flags().StringVar(&candidate, "candidate", "", "the standby to promote (default: the most up-to-date healthy standby)")
	cmd.Flags().StringVar(&scheduled, "scheduled", "", "switch over at this time instead of now")
	f.register(cmd, true)
	return cmd
}

func failoverCmd() *cobra.Command {
	var f apiFlags
	var candidate string
	var force bool
	cmd := &cobra.Command{
		Use:   "failover [--candidate NODE] [--force]",
		Short: "Promote a standby when the primary is gone (also while paused)",
		Long: `Promote a standby when the primary is gone (also while paused).

It is refused while the old primary may still be writable (its agent or its
PostgreSQL answers, or its lease has not run out), and, in synchronous mode,
for a candidate that is not known to hold every acknowledged commit.
--force promotes anyway: the old primary may keep acknowledging commits
until it is fenced, and commits only it or another standby held are lost.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return control(cmd, &f, "/failover", agent.ControlRequest{Candidate: candidate, Force: force})
		},
	}
	cmd.Flags().StringVar(&candidate, "candidate", "", "the standby to promote")
	cmd.Flags().BoolVar(&force, "force", false, "promote even if the old primary may be alive or the candidate may lack acknowledged commits")
	f.register(cmd, true)
	return cmd
}

func pauseCmd(pause bool) *cobra.Command {
	var f apiFlags
	use, short, path := "pause", "Stop automatic failover (maintenance)", "/pause"
	if !pause {
		use, short, path = "resume", "Restart automatic failover", "/resume"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return control(cmd, &f, path, agent.ControlRequest{})
		},
	}
	f.register(cmd, true)
	return cmd
}

func reinitCmd() *cobra.Command {
	var f apiFlags
	var noWait bool
	cmd := &cobra.Command{
		Use:   "reinit NODE",
		Short: "Re-clone a standby from the primary (its old data is kept until the clone is in place)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := control(cmd, &f, "/reinit", agent.ControlRequest{Member: args[0]}); err != nil {
				return err
			}
			if noWait {
				return nil
			}
			return followReinit(cmd, &f, args[0])
		},
	}
	f.register(cmd, true)
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the request is accepted")
	return cmd
}

func reloadCmd() *cobra.Command {
	var f apiFlags
	cmd := &cobra.Command{
		Use:   "reload [NODE]",
		Short: "Make PostgreSQL read its configuration files again, on NODE or on every member",
		Long: `Make PostgreSQL read its configuration files again (pg_ctl reload), on NODE
or on every member: for an ALTER SYSTEM or a hand edit of postgresql.conf.
The agent first rewrites its own settings from the cluster-wide
configuration (which edit-config applies by itself). Settings that need a
restart are listed by list as pending.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var req agent.ControlRequest
			if len(args) == 1 {
				req.Member = args[0]
			}
			return control(cmd, &f, "/reload", req)
		},
	}
	f.register(cmd, true)
	return cmd
}

// followReinit shows the member's progress until it streams again.
func followReinit(cmd *cobra.Command, f *apiFlags, name string) error {
	c, err := f.client()
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	deadline := time.Now().Add(30 * time.Minute)
	last, seenWork := "", false
	for time.Now().Before(deadline) {
		v, err := fetchView(cmd.Context(), c)
		if err == nil {
			for _, m := range v.Members {
				if m.Name != name {
					continue
				}
				if m.State != last {
					fmt.Fprintf(out, "%s  %s: %s\n", stamp(), name, m.State)
					last = m.State
				}
				if m.Activity != "" {
					seenWork = true
				}
				if seenWork && m.State == "streaming" {
					fmt.Fprintf(out, "%s is streaming again\n", name)
					return nil
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.New("gave up waiting for the reinit to finish; see pgha-agent list")
}

// control POSTs req to the first member that answers and prints the result.
func control(cmd *cobra.Command, f *apiFlags, path string, req agent.ControlRequest) error {
	return send(cmd, f, http.MethodPost, path, req)
}

// send makes a control call with req as its JSON body (none if nil) at the
// first member that answers, and prints the result's message.
func send(cmd *cobra.Command, f *apiFlags, method, path string, req any) error {
	c, err := f.client()
	if err != nil {
		return err
	}
	var body []byte
	if req != nil {
		body, _ = json.Marshal(req)
	}
	return c.each(func(base string) error {
		var res agent.ControlResult
		if err := c.call(cmd.Context(), method, base+path, body, &res); err != nil {
			return err
		}
		fmt.Fprintln(cmd.OutOrStdout(), res.Message)
		return nil
	})
}

// parseWhen reads an RFC 3339 time, or one without a zone in local time.
func parseWhen(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02 15:04"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("--scheduled %q: want a time such as 2026-12-24T03:00:00Z", s)
}

func flushCmd() *cobra.Command {
	var f apiFlags
	cmd := &cobra.Command{
		Use:   "flush [switchover | restart [NODE]]",
		Short: "Cancel the scheduled switchover (default), or the scheduled restarts (of NODE only)",
		Args:  cobra.MaximumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case len(args) == 0 || args[0] == "switchover" && len(args) == 1:
				return send(cmd, &f, http.MethodDelete, "/switchover", nil)
			case args[0] == "restart":
				var req agent.ControlRequest
				if len(args) == 2 {
					req.Member = args[1]
				}
				return send(cmd, &f, http.MethodDelete, "/restart", req)
			}
			return fmt.Errorf("flush %s: want switchover, or restart [NODE]", strings.Join(args, " "))
		},
	}
	f.register(cmd, true)
	return cmd
}

func tagCmd() *cobra.Command {
	var f apiFlags
	cmd := &cobra.Command{
		Use:   "tag NODE KEY=VALUE...",
		Short: "Set a member's tags at run time: nofailover, nosync, noloadbalance, clonefrom (true/false), priority (KEY= goes back to its file's value)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := agent.TagsRequest{Member: args[0], Tags: map[string]string{}}
			for _, kv := range args[1:] {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return fmt.Errorf("%q: want KEY=VALUE (KEY= removes the run-time value)", kv)
				}
				req.Tags[k] = v
			}
			return send(cmd, &f, http.MethodPost, "/tags", req)
		},
	}
	f.register(cmd, true)
	return cmd
}
