package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Version is the chatmesh release.
const Version = "0.1.0"

func main() {
	os.Exit(mainExit(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// mainExit runs the command in args until it ends or SIGINT/SIGTERM
// arrives, prints its error to stderr and returns the exit status.
func mainExit(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, args, stdin, stdout, stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(stderr, "chatmesh:", err)
	}
	return exitCode(err)
}

const usage = `usage: chatmesh <command> [flags]

commands:
  dev       run a whole region in one process (embedded Kafka + Pebble by default)
  region    run the region services only (sequencer + API for edges); needs --kafka
  edge      run an edge only, talking to a region (--region-url) and Kafka (--kafka)
  broker    run the embedded Kafka-protocol broker as its own process (region simulator)
  chat      the command-line chat client
  bench     load generator over the real protocol
  sim       region simulator: traffic + SIGKILLs of the region, checks nothing is lost/duplicated/reordered
  directory operate the region directory: status, move-user, move-conversation, conv, user, edge-health
  version   print the version
`

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command")
	}
	switch args[0] {
	case "dev":
		return runDev(ctx, args[1:], stdout, stderr)
	case "region":
		return runRegion(ctx, args[1:], stdout, stderr)
	case "edge":
		return runEdge(ctx, args[1:], stdout, stderr)
	case "broker":
		return runBroker(ctx, args[1:], stdout, stderr)
	case "chat":
		return runChat(ctx, args[1:], stdin, stdout, stderr)
	case "sim":
		return runSim(ctx, args[1:], stdout, stderr)
	case "bench":
		return runBench(ctx, args[1:], stdout, stderr)
	case "directory":
		return runDirectory(ctx, args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "chatmesh", Version)
		return nil
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}
