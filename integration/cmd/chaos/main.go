// Command chaos runs the fault campaign (integration/netcluster/chaos) on a
// network-namespace cluster of three pgha agents and a client, and prints
// per fault kind: count, writes-resumed and recovery times, acknowledged
// writes lost (plain and cancel-acknowledged), intervals in which two
// servers acknowledged commits, two writable primaries or two VIP holders,
// and diverged standbys that served; then every failure with its evidence.
// It exits 1 if any check fails. It needs root.
//
//	go run ./integration/cmd/chaos -duration 10m
//	go run ./integration/cmd/chaos -short            # the CI campaign, ~2 minutes
//	go run ./integration/cmd/chaos -faults 20 -seed 7
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/pgha/pgha/integration/netcluster"
	"github.com/pgha/pgha/integration/netcluster/chaos"
)

func main() {
	duration := flag.Duration("duration", 10*time.Minute, "inject faults until this much time has passed")
	faults := flag.Int("faults", 0, "stop after this many faults (0: until -duration)")
	seed := flag.Int64("seed", 0, "seed of the schedule (0: from the clock; printed)")
	short := flag.Bool("short", false, "the CI campaign: every fault kind once, held 2s (about 2 minutes)")
	hold := flag.Duration("hold", 0, "hold every fault this long (0: 2s-6s at random, SIGSTOPs 2s-30s)")
	writers := flag.Int("writers", 4, "concurrent writer sessions through the VIP (one more per host writes to it directly)")
	only := flag.String("kinds", "", "inject only these fault kinds, comma-separated (default: every kind)")
	binary := flag.String("agent", "", "a built pgha-agent to test (default: go build ./cmd/pgha-agent)")
	keep := flag.Bool("keep", false, "keep the cluster's directory (configs, logs, data) afterwards")
	flag.Parse()
	if *seed == 0 {
		*seed = time.Now().UnixNano()
	}
	logf := func(format string, args ...any) { log.Printf(format, args...) }

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := netcluster.Build(netcluster.Options{Binary: *binary, Keep: *keep, Logf: logf, DataFS: true})
	if err != nil {
		log.Fatal(err)
	}
	opts := chaos.Options{Duration: *duration, Faults: *faults, Seed: *seed, Short: *short, Writers: *writers, Logf: logf}
	if *hold > 0 {
		opts.HoldMin, opts.HoldMax = *hold, *hold
		opts.FreezeMin, opts.FreezeMax = *hold, *hold
	}
	if *only != "" {
		for _, k := range strings.Split(*only, ",") {
			opts.Kinds = append(opts.Kinds, chaos.Kind(strings.TrimSpace(k)))
		}
	}
	logf("chaos: seed %d, cluster in %s", *seed, c.Dir)
	report, err := chaos.Run(ctx, c, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, c.LogTails(60, 20))
		_ = c.Close()
		log.Fatalf("chaos: %v", err)
	}
	report.Print(os.Stdout)
	if report.Failed() {
		fmt.Fprintln(os.Stderr, c.LogTails(60, 20))
	}
	if err := c.Close(); err != nil {
		log.Printf("close: %v", err)
	}
	if report.Failed() {
		os.Exit(1)
	}
}
