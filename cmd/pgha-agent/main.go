// Command pgha-agent runs one member of a pgha cluster, a local three-node
// demo, the operator's commands (list, switchover, remove, ...) and certs,
// which creates the cluster's CA and node certificates.
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
	root.AddCommand(runCmd(), demoCmd(), listCmd(), historyCmd(), showConfigCmd(), editConfigCmd(), reloadCmd(), restartCmd(), flushCmd(), tagCmd(), removeCmd(), votersCmd(), addCmd(),
		switchoverCmd(), failoverCmd(), reinitCmd(), backupCmd(), pauseCmd(true), pauseCmd(false), certsCmd(), routerCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "pgha-agent:", err)
		os.Exit(1)
	}
}
