package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgha/pgha/agent"
)

// The operator's control commands. Each posts to any member's REST API; the
// member forwards what the Raft leader must decide.

func switchoverCmd() *cobra.Command {
	var apis []string
	var candidate string
	cmd := &cobra.Command{
		Use:   "switchover [--candidate NODE]",
		Short: "Move the primary role to a standby with no data loss (the old primary stops cleanly and follows)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return control(cmd, apis, "/switchover", agent.ControlRequest{Candidate: candidate})
		},
	}
	cmd.Flags().StringVar(&candidate, "candidate", "", "the standby to promote (default: the most up-to-date healthy standby)")
	cmd.Flags().StringSliceVar(&apis, "api", defaultAPIs, "agent REST URLs to ask")
	return cmd
}

func failoverCmd() *cobra.Command {
	var apis []string
	var candidate string
	cmd := &cobra.Command{
		Use:   "failover [--candidate NODE]",
		Short: "Force a promotion when the primary is gone (also while paused)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return control(cmd, apis, "/failover", agent.ControlRequest{Candidate: candidate})
		},
	}
	cmd.Flags().StringVar(&candidate, "candidate", "", "the standby to promote")
	cmd.Flags().StringSliceVar(&apis, "api", defaultAPIs, "agent REST URLs to ask")
	return cmd
}

func pauseCmd(pause bool) *cobra.Command {
	var apis []string
	use, short, path := "pause", "Stop automatic failover (maintenance)", "/pause"
	if !pause {
		use, short, path = "resume", "Restart automatic failover", "/resume"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return control(cmd, apis, path, agent.ControlRequest{})
		},
	}
	cmd.Flags().StringSliceVar(&apis, "api", defaultAPIs, "agent REST URLs to ask")
	return cmd
}

func reinitCmd() *cobra.Command {
	var apis []string
	var noWait bool
	cmd := &cobra.Command{
		Use:   "reinit NODE",
		Short: "Re-clone a standby from the primary (its old data is kept until the clone is in place)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := control(cmd, apis, "/reinit", agent.ControlRequest{Member: args[0]}); err != nil {
				return err
			}
			if noWait {
				return nil
			}
			return followReinit(cmd, apis, args[0])
		},
	}
	cmd.Flags().StringSliceVar(&apis, "api", defaultAPIs, "agent REST URLs to ask")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the request is accepted")
	return cmd
}

// followReinit shows the member's progress until it streams again.
func followReinit(cmd *cobra.Command, apis []string, name string) error {
	out := cmd.OutOrStdout()
	deadline := time.Now().Add(30 * time.Minute)
	last, seenWork := "", false
	for time.Now().Before(deadline) {
		v, err := fetchView(cmd.Context(), apis)
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
func control(cmd *cobra.Command, apis []string, path string, req agent.ControlRequest) error {
	body, _ := json.Marshal(req)
	var errs []error
	for _, u := range apis {
		res, err := post(cmd.Context(), strings.TrimRight(u, "/")+path, body)
		if err == nil {
			fmt.Fprintln(cmd.OutOrStdout(), res.Message)
			return nil
		}
		var refused refusal
		if errors.As(err, &refused) {
			return err // the cluster answered: no point asking another member
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

type refusal struct{ msg string }

func (r refusal) Error() string { return r.msg }

func post(ctx context.Context, url string, body []byte) (agent.ControlResult, error) {
	var res agent.ControlResult
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return res, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return res, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		var e struct{ Error string }
		_ = json.Unmarshal(b, &e)
		if resp.StatusCode == http.StatusConflict || resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusNotFound {
			return res, refusal{e.Error}
		}
		return res, fmt.Errorf("%s: %s: %s", url, resp.Status, e.Error)
	}
	return res, json.Unmarshal(b, &res)
}
