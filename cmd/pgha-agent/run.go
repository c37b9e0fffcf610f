package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/pgha/pgha/agent"
)

func runCmd() *cobra.Command {
	var configPath, logLevel string
	cmd := &cobra.Command{
		Use:   "run --config node.yaml",
		Short: "Run this node's agent (what systemd starts)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			cfg, err := agent.LoadConfig(configPath)
			if err != nil {
				return err
			}
			a, err := agent.New(cfg, log)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			go notifySystemd(ctx, a, "joined the cluster; PostgreSQL is up", log)
			err = a.Run(ctx)
			if errors.Is(err, agent.ErrRemoved) {
				log.Warn("exiting: this node is no longer a member; remove its data or re-add it to rejoin")
				return nil
			}
			return err
		},
	}
	cmd.Flags().StringVarP(&configPath, "config", "c", "/etc/pgha/node.yaml", "this node's configuration file")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}
