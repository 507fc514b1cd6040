package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/refresher/refresher/internal/bench"
)

// benchExe locates the binary whose `publish` the bench runs as a child process to
// measure its peak memory; tests, whose own binary is not refresher, replace it.
var benchExe = os.Executable

func benchCmd(e *env) *cobra.Command {
	var (
		asJSON                 bool
		quick                  bool
		rows, requests, pool   int
		concurrency, slowConc  []int
		cpuProfile, memProfile string
	)
	cmd := &cobra.Command{
		Use:   "bench [--json] [--rows N] [--pool N] [--quick]",
		Short: "Measure publish and consume rates, latency and memory beside same-run baselines",
		Long: `Measure refresher on this machine, each figure beside the baseline it should be judged
against, measured in the same run, and their ratio:

  1. publish: PublishScan over --rows rows vs a raw PublishAsync loop of the same
     messages; peak RSS of "refresher publish" (a child process) at rows/10 and rows
  2. consume per row (claim, call, commit), instant in-process provider, at each
     --concurrency (calls in flight) on a pool of --pool connections: end-to-end
     rate vs the bare lock-and-update transaction on as many connections, and vs
     the consumer's own claim, call and commit run directly (RefreshNow); the best
     is rerun with --requests requests; then batched commits vs the bare transaction
  3. latency at 200 requests/s: publish to commit, vs RefreshNow
  4. slow provider (100 ms) at 64, 256 and 1,024 calls in flight on the same pool:
     rate vs min(in flight / latency, the instant-provider rate), peak connections
  5. duplicates: 10 requests per row, provider calls per row, cost of a skip
  6. skip path: rate, and proof from pg_stat_database that it writes nothing
  7. provider limits: per-row consume with limits that never bind (every call takes
     its permit, slot and rate token through the shared bucket) vs no limits: the
     limiter's cost per call

Every consumer and baseline works on a pool of --pool connections (default 8):
provider calls in flight hold no connection, so the pool does not follow them.

It starts nats-server in-process, finds PostgreSQL like "demo" (DATABASE_URL, the
server on 127.0.0.1:5432, or a throwaway cluster), works in a database of its own,
seeds it with COPY and drops it at the end. The full run takes several minutes;
--quick runs every figure at a small size in well under a minute.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o := bench.DefaultOptions()
			if quick {
				o = bench.QuickOptions()
			}
			f := cmd.Flags()
			if f.Changed("rows") {
				o.Rows = rows
			}
			if f.Changed("requests") {
				o.Requests = requests
				o.SweepRequests = min(o.SweepRequests, requests)
			}
			if f.Changed("concurrency") {
				o.Concurrencies = concurrency
			}
			if f.Changed("slow-concurrency") {
				o.SlowConcurrencies = slowConc
			}
			if f.Changed("pool") {
				o.Pool = pool
			}
			o.CPUProfile, o.MemProfile = cpuProfile, memProfile
			o.Log = e.log
			exe, err := benchExe()
			if err != nil {
				return fmt.Errorf("locate the refresher binary: %w", err)
			}
			o.Exe, o.ExeArgs = exe, []string{"bench", publishChild}
			if err := o.Validate(); err != nil {
				return usageError{err}
			}
			rep, err := bench.Run(cmd.Context(), o)
			if err != nil {
				if errors.Is(err, bench.ErrOptions) {
					return usageError{err}
				}
				return err
			}
			if asJSON {
				return rep.WriteJSON(e.stdout)
			}
			return rep.WriteTable(e.stdout)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&asJSON, "json", false, "print the report as JSON instead of a table")
	f.BoolVar(&quick, "quick", false, "every figure at a small size (seconds, for tests); the figures mean little")
	// The defaults depend on --quick, so they are applied when a flag is not given and
	// stated once, in the usage, instead of beside a flag default that may not apply.
	def, q := bench.DefaultOptions(), bench.QuickOptions()
	f.IntVar(&rows, "rows", 0, fmt.Sprintf("rows the publish figure scans (default %d; %d with --quick)", def.Rows, q.Rows))
	f.IntVar(&requests, "requests", 0, fmt.Sprintf("requests of the final per-row consume run (default %d; %d with --quick)", def.Requests, q.Requests))
	f.IntSliceVar(&concurrency, "concurrency", nil, fmt.Sprintf("per-row consume calls in flight to try (default %s; %s with --quick)", ints(def.Concurrencies), ints(q.Concurrencies)))
	f.IntSliceVar(&slowConc, "slow-concurrency", nil, fmt.Sprintf("slow-provider calls in flight to try; the largest is judged (default %s; %s with --quick)", ints(def.SlowConcurrencies), ints(q.SlowConcurrencies)))
	f.IntVar(&pool, "pool", 0, fmt.Sprintf("database connections of every consumer and baseline pool (default %d)", def.Pool))
	f.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the final per-row consume run to this file")
	f.StringVar(&memProfile, "memprofile", "", "write an allocation profile of the final per-row consume run to this file (and FILE.base, taken before it)")
	cmd.AddCommand(benchPublishChildCmd(e))
	return cmd
}

// publishChild is the hidden subcommand of bench that the peak-RSS figure runs.
const publishChild = "publish-child"

// benchPublishChildCmd runs "refresher publish" with the given flags in this process
// and then prints the process's peak RSS. The bench starts it as a child process so
// that the figure is the publish path's alone.
func benchPublishChildCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:                publishChild + " [publish flags]",
		Short:              "Run publish, then print the peak RSS of this process (used by bench)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if code := run(cmd.Context(), append([]string{"publish"}, args...), e.stdout, e.stderr); code != 0 {
				return fmt.Errorf("publish exited with status %d", code)
			}
			kib, err := bench.PeakRSSKiB()
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s=%d\n", bench.PeakRSSKey, kib)
			return nil
		},
	}
}

// ints formats a list of ints as a flag takes it: 8,16,32.
func ints(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}
