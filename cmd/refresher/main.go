// Command refresher refreshes per-row OAuth credentials held in PostgreSQL through NATS
// JetStream, one locked row per message. See the README for the architecture.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/refresher/refresher/internal/config"
	"github.com/refresher/refresher/internal/logging"
	"github.com/refresher/refresher/internal/progress"
	"github.com/refresher/refresher/internal/tracing"
	"github.com/refresher/refresher/model"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// usageError marks bad flags and arguments: exit 2, like configuration errors.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// env is what every subcommand gets: where to write and how to log.
type env struct {
	stdout, stderr io.Writer
	log            *slog.Logger
}

// run executes one command line and returns the exit code: 0 ok, 1 failure, 2 bad
// configuration or usage.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr}
	// OpenTelemetry: off unless the OTEL_* variables name an exporter (internal/tracing).
	shutdownTracing := func(context.Context) error { return nil }
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := shutdownTracing(sctx); err != nil && e.log != nil {
			e.log.Warn("could not flush traces", "error", err)
		}
	}()
	// The default logger is this run's while it lasts (see PersistentPreRunE), and the
	// one before afterwards: run is called many times in one test process. SetDefault
	// also redirects the log package, which it does not undo itself.
	prevLog, prevOut, prevFlags := slog.Default(), log.Writer(), log.Flags()
	defer func() {
		slog.SetDefault(prevLog)
		log.SetOutput(prevOut)
		log.SetFlags(prevFlags)
	}()
	root := &cobra.Command{
		Use:   "refresher",
		Short: "Refresh OAuth credentials in PostgreSQL through NATS JetStream, one locked row per message",
		Long: `refresher refreshes per-row state held in PostgreSQL (OAuth access and refresh tokens)
through NATS JetStream so that no two writers can undo each other's work.

A publisher emits one message per credential (refresh.<service>.<id>); a fleet of
consumers shares one durable consumer and handles each message in one transaction that
locks the row, re-reads it, calls the provider with its current refresh token, writes
the token columns, commits, and only then acknowledges.

Configuration comes from the environment: run "refresher config" to see every variable.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			var lc config.Logging
			if err := config.Load(&lc); err != nil {
				return err
			}
			// Through progress.Under: a log line erases a progress line drawn on stderr
			// first, instead of being written onto its end.
			log, err := logging.New(progress.Under(stderr), lc.Format, lc.Level)
			if err != nil {
				if cmd.Name() != "config" {
					return &config.Error{Err: err}
				}
				// config shows the whole table and reports the bad value with the others.
				log = slog.New(slog.NewTextHandler(stderr, nil))
			}
			e.log = log
			model.ApplicationName = "refresher-" + cmd.Name()
			// Packages that log without being handed a logger (stream.EnsureStreams,
			// called by consume and publish) log here too.
			slog.SetDefault(log)
			if tracing.Enabled() && cmd.Name() != "config" {
				shutdown, err := tracing.Setup(cmd.Context(), cmd.Name())
				if err != nil {
					return &config.Error{Err: err}
				}
				shutdownTracing = shutdown
				log.Info("sending traces over OTLP", "endpoint", redactedEndpoint())
			}
			return nil
		},
	}
	root.Version = version()
	root.SetVersionTemplate(versionTemplate)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetArgs(args)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(
		migrateCmd(e), seedCmd(e), publishCmd(e), consumeCmd(e), configCmd(e),
		fakeProviderCmd(e), demoCmd(e), verifyCmd(e),
		replayCmd(e), dlqCmd(e), statusCmd(e), consoleCmd(e), benchCmd(e), rekeyCmd(e), streamsCmd(e), natsNodeCmd(e),
	)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "refresher:", err)
	var ce *config.Error
	var ue usageError
	if errors.As(err, &ce) || errors.As(err, &ue) || isCobraUsage(err) {
		return 2
	}
	return 1
}

// isCobraUsage recognises cobra's own argument errors, which it does not type.
func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "accepts ", "requires at least", "requires at most", "required flag"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

// redactedEndpoint is the OTLP endpoint traces go to, as logs may show it.
func redactedEndpoint() string {
	for _, k := range []string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"} {
		if v := os.Getenv(k); v != "" {
			return model.RedactURL(v)
		}
	}
	return "(the exporter's default, http://localhost:4318)"
}
