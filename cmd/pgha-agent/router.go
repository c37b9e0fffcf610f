package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/pgha/pgha/routeronly"
)

// routerCmd is the router-only process of an application host: the
// cluster's router on 9999/9998 of this host, following the agents' API,
// with no PostgreSQL and no Raft vote (package routeronly).
func routerCmd() *cobra.Command {
	var configPath, logLevel string
	cmd := &cobra.Command{
		Use:   "router --config router.yaml",
		Short: "Run a router-only process on an application host (follows the agents; no PostgreSQL, no vote)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			cfg, err := routeronly.LoadConfig(configPath)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			p, err := routeronly.Start(ctx, cfg, log)
			if err != nil {
				return err
			}
			go notifySystemd(ctx, p, "routing on both ports; following the agents", log)
			p.Wait()
			log.Info("router-only process stopped")
			return nil
		},
	}
	cmd.Flags().StringVarP(&configPath, "config", "c", "/etc/pgha/router.yaml", "the router-only process's configuration file")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}
