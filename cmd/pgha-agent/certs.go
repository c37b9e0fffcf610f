package main

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/pki"
)

func certsCmd() *cobra.Command {
	var dir, cluster string
	var opts pki.GenerateOptions
	cmd := &cobra.Command{
		Use:   "certs --dir DIR --cluster NAME NODE=HOST[,HOST...]...",
		Short: "Create the cluster CA and a certificate for each node (agent-to-agent mutual TLS)",
		Long: `Create a private CA for the cluster and one certificate per node, for the
tls section of the nodes' configs. HOSTs are the IPs and DNS names the
other agents (and the CLI) dial the node at: the hosts of its raft and api
addresses; add 127.0.0.1 to call a node's agent from the node itself.

  pgha-agent certs --dir /etc/pgha/certs --cluster main \
      node1=10.0.0.11 node2=10.0.0.12 node3=10.0.0.13,node3.example.com

A directory that already holds a CA is refused: a new CA would make every
certificate it signed untrusted. --reuse-ca issues certificates with the
existing CA (add a node, renew a certificate); --replace-ca starts over.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" || cluster == "" {
				return errors.New("--dir and --cluster are required")
			}
			nodes, err := parseNodeHosts(args)
			if err != nil {
				return err
			}
			if dir, err = filepath.Abs(dir); err != nil {
				return err
			}
			if err := pki.GenerateClusterWith(dir, cluster, nodes, opts); err != nil {
				return err
			}
			printCerts(cmd.OutOrStdout(), dir, nodes, opts.ReuseCA)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "directory to write ca.crt, ca.key and NODE.crt, NODE.key into")
	cmd.Flags().StringVar(&cluster, "cluster", "", "the cluster's name (cluster.name in the configs)")
	cmd.Flags().BoolVar(&opts.ReuseCA, "reuse-ca", false, "issue the certificates with the CA already in --dir (needs its ca.key)")
	cmd.Flags().BoolVar(&opts.ReplaceCA, "replace-ca", false, "replace the CA in --dir; every node then needs its new files")
	cmd.MarkFlagsMutuallyExclusive("reuse-ca", "replace-ca")
	return cmd
}

// parseNodeHosts reads NODE=HOST[,HOST...] arguments.
func parseNodeHosts(args []string) (map[string][]string, error) {
	if len(args) == 0 {
		return nil, errors.New("name the nodes: NODE=HOST[,HOST...], e.g. node1=10.0.0.11")
	}
	nodes := map[string][]string{}
	for _, arg := range args {
		name, list, ok := strings.Cut(arg, "=")
		if !ok || list == "" {
			return nil, fmt.Errorf("%q: give NODE=HOST[,HOST...], e.g. node1=10.0.0.11", arg)
		}
		if !agent.ValidMemberName(name) {
			return nil, fmt.Errorf("%q is not a member name (lowercase letters, digits, '-' and '_'): the certificate must carry the node's name", name)
		}
		if _, dup := nodes[name]; dup {
			return nil, fmt.Errorf("%s is given twice", name)
		}
		for _, h := range strings.Split(list, ",") {
			if h = strings.TrimSpace(h); h == "" {
				return nil, fmt.Errorf("%q: empty host", arg)
			}
			nodes[name] = append(nodes[name], h)
		}
	}
	return nodes, nil
}

func printCerts(out io.Writer, dir string, nodes map[string][]string, reused bool) {
	fmt.Fprintf(out, "Wrote to %s:\n", dir)
	if reused {
		fmt.Fprintf(out, "  %-16s the cluster CA (kept)\n", pki.CACertFile)
	} else {
		fmt.Fprintf(out, "  %-16s the cluster CA certificate: copy it to every node\n", pki.CACertFile)
		fmt.Fprintf(out, "  %-16s the CA's private key (0600): keep it off the nodes, it is needed only to issue certificates\n", pki.CAKeyFile)
	}
	names := slices.Sorted(maps.Keys(nodes))
	for _, n := range names {
		fmt.Fprintf(out, "  %-16s %s's certificate, for %s\n", n+".crt", n, strings.Join(nodes[n], ", "))
		fmt.Fprintf(out, "  %-16s %s's private key (0600)\n", n+".key", n)
	}
	fmt.Fprintln(out, "\nOn each node, copy ca.crt and its own NODE.crt and NODE.key (owned by the user the agent runs as, the key mode 0600) and add to its config:")
	for _, n := range names {
		f := pki.Files(dir, n)
		fmt.Fprintf(out, "\n  # %s\n  tls:\n    ca: %s\n    cert: %s\n    key: %s\n", n, f.CA, f.Cert, f.Key)
	}
	fmt.Fprintln(out, "\n(Paths as written here; adjust them to where you copy the files.)")
	fmt.Fprintln(out, "With tls set, every api URL (cluster.members, cluster.join, api.advertise) must be https://.")
	fmt.Fprintln(out, "The CLI then needs --ca (or PGHA_CA) to verify the agents, and --api https://...")
}
