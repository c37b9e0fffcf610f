// Command pgha-agent runs one member of a pgha cluster, a local three-node
// demo, and the operator's commands (list, remove).
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "pgha-agent",
		Short:         "High availability for PostgreSQL: Raft-decided failover, replication and routing in one binary",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(runCmd(), demoCmd(), listCmd(), removeCmd(),
		switchoverCmd(), failoverCmd(), reinitCmd(), pauseCmd(true), pauseCmd(false))
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "pgha-agent:", err)
		os.Exit(1)
	}
}
