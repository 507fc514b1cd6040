package deploy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// buildBinary builds cmd/refresher into dir. The main package cannot be imported, and
// the binary's own --help is what a manifest's command line meets.
func buildBinary(dir string) (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go") //nolint:staticcheck // SA1019: only when go is not on PATH; this test runs on the machine that built it
	}
	bin := filepath.Join(dir, "refresher")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", bin, "./cmd/refresher")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/refresher: %w\n%s", err, out)
	}
	return bin, nil
}

// helpText is one command's parsed --help.
type helpText struct {
	commands map[string]bool // its subcommands
	flags    map[string]bool // long and short names (without dashes) -> takes a value
}

// binary runs the built refresher, caching --help by command path.
type binary struct {
	path string
	mu   sync.Mutex
	help map[string]helpText
}

// run executes the binary with an environment that has none of refresher's variables.
func (b *binary) run(args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.path, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.TempDir()}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// flagLine matches pflag's usage lines: "  -h, --help   help", "      --every duration   ...".
var flagLine = regexp.MustCompile(`^\s+(?:-([A-Za-z0-9]), )?--([A-Za-z0-9][A-Za-z0-9-]*)(?: ([A-Za-z0-9.\[\]]+))?(?:\s{2,}|$)`)

// helpOf parses `refresher <path...> --help`.
func (b *binary) helpOf(path []string) (helpText, error) {
	key := strings.Join(path, " ")
	b.mu.Lock()
	defer b.mu.Unlock()
	if h, ok := b.help[key]; ok {
		return h, nil
	}
	out, errOut, err := b.run(append(append([]string{}, path...), "--help")...)
	if err != nil {
		return helpText{}, fmt.Errorf("refresher %s --help: %w: %s", key, err, strings.TrimSpace(errOut))
	}
	h := helpText{commands: map[string]bool{}, flags: map[string]bool{}}
	section := ""
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, " ") {
			section = strings.TrimSuffix(strings.TrimSpace(line), ":")
			continue
		}
		switch section {
		case "Available Commands":
			if f := strings.Fields(line); len(f) > 0 {
				h.commands[f[0]] = true
			}
		case "Flags", "Global Flags":
			if m := flagLine.FindStringSubmatch(line); m != nil {
				takesValue := m[3] != ""
				h.flags[m[2]] = takesValue
				if m[1] != "" {
					h.flags[m[1]] = takesValue
				}
			}
		}
	}
	if b.help == nil {
		b.help = map[string]helpText{}
	}
	b.help[key] = h
	return h, nil
}

// checkCommand checks a workload's command line against the binary: the subcommand
// exists, each flag is one it has, the values parse, and nothing positional is left.
func checkCommand(b *binary, w workload) []string {
	var problems []string
	bad := func(format string, args ...any) {
		problems = append(problems, w.where+": "+fmt.Sprintf(format, args...))
	}
	if len(w.args) == 0 {
		return []string{w.where + ": no command; the image's default is --help"}
	}
	root, err := b.helpOf(nil)
	if err != nil {
		return []string{err.Error()}
	}
	// The command path: leading words that name (sub)commands.
	var path []string
	h := root
	rest := w.args
	for len(rest) > 0 && !strings.HasPrefix(rest[0], "-") && h.commands[rest[0]] {
		path = append(path, rest[0])
		rest = rest[1:]
		if h, err = b.helpOf(path); err != nil {
			return []string{err.Error()}
		}
	}
	if len(path) == 0 {
		return []string{fmt.Sprintf("%s: %q is not a refresher command (refresher --help lists them)", w.where, w.args[0])}
	}
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if !strings.HasPrefix(a, "-") || a == "-" {
			bad("positional argument %q: %s takes none (its flags are --name value)", a, strings.Join(path, " "))
			continue
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		takesValue, ok := h.flags[name]
		if !ok {
			bad("%s has no flag %s (refresher %s --help)", strings.Join(path, " "), a, strings.Join(path, " "))
			if !hasValue && i+1 < len(rest) && !strings.HasPrefix(rest[i+1], "-") {
				i++ // most likely its value: one problem is enough
			}
			continue
		}
		if takesValue && !hasValue {
			i++ // its value
		}
	}
	// Let the binary parse the whole line: --help stops it after flag parsing, so a
	// value of the wrong type (--every 15) fails here without connecting anywhere.
	if _, errOut, err := b.run(append(append([]string{}, w.args...), "--help")...); err != nil {
		bad("refresher %s --help: %v: %s", strings.Join(w.args, " "), err, strings.TrimSpace(errOut))
	}
	return problems
}

// runsForever reports whether a command line keeps running until stopped, as
// opposed to doing its work once and exiting.
func runsForever(args []string) bool {
	switch cmd := firstWord(args); cmd {
	case "consume", "fake-provider":
		return true
	case "publish":
		return hasFlag(args, "every")
	}
	return false
}

func firstWord(args []string) string {
	if len(args) == 0 {
		return ""
	}
	return args[0]
}

// longRunning reports whether the platform restarts the workload when it exits.
func longRunning(w workload) bool {
	switch w.kind {
	case "compose":
		r := getString(w.service, "restart")
		return r != "" && r != "no" && r != "on-failure"
	case "Job", "CronJob", "Pod":
		return false
	}
	return true // Deployment, StatefulSet, DaemonSet, ReplicaSet
}

// checkLifecycle refuses a one-shot command where the platform restarts whatever
// exits (a `publish` without --every in a Deployment republishes in a restart loop),
// and a never-ending one in a Job (it never completes).
func checkLifecycle(w workload) []string {
	switch forever, restarted := runsForever(w.args), longRunning(w); {
	case restarted && !forever:
		return []string{fmt.Sprintf("%s: %q exits when done, but a %s restarts it: run it as a Job or CronJob (compose: restart: \"no\"), or give publish --every", w.where, strings.Join(w.args, " "), w.kind)}
	case !restarted && forever:
		return []string{fmt.Sprintf("%s: %q never exits, but a %s is meant to complete", w.where, strings.Join(w.args, " "), w.kind)}
	}
	return nil
}

// checkSchedule checks publish's periods against the stream settings: --every within
// what the binary accepts, --expiring-within above it, and a CronJob's period equal to
// the publish window its dedupe ids are built from.
func checkSchedule(w workload, vs varSet) []string {
	if w.command() != "publish" {
		return nil
	}
	var problems []string
	bad := func(format string, args ...any) {
		problems = append(problems, w.where+": "+fmt.Sprintf(format, args...))
	}
	setting := func(key string) time.Duration {
		v, ok := w.env[key]
		if !ok {
			v = vs.global[key].Default
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			bad("%s=%q: %v", key, v, err)
		}
		return d
	}
	dup := setting("REFRESHER_STREAM_DUPLICATE_WINDOW")
	window := setting("REFRESHER_PUBLISH_WINDOW")
	flagDuration := func(name string) (time.Duration, bool) {
		v, ok := flagValue(w.args, name)
		if !ok {
			return 0, false
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			bad("--%s %q: %v", name, v, err)
			return 0, false
		}
		return d, true
	}
	if d, ok := flagDuration("window"); ok {
		window = d
	}
	if every, ok := flagDuration("every"); ok {
		window = every
		if every < time.Second || every > dup {
			bad("--every %s: want 1s to REFRESHER_STREAM_DUPLICATE_WINDOW (%s)", every, dup)
		}
		if within, ok := flagDuration("expiring-within"); ok && within <= every {
			bad("--expiring-within %s is not above --every %s: a token expiring before the next run would be missed", within, every)
		}
	} else if window > dup {
		bad("publish window %s exceeds REFRESHER_STREAM_DUPLICATE_WINDOW (%s)", window, dup)
	}
	if w.kind == "CronJob" {
		period, err := cronPeriod(getString(w.object, "spec", "schedule"))
		switch {
		case err != nil:
			bad("%v", err)
		case period != window:
			bad("schedule %q runs every %s but the publish window is %s (REFRESHER_PUBLISH_WINDOW or --window): they must agree for the dedupe ids to", getString(w.object, "spec", "schedule"), period, window)
		}
	}
	return problems
}

// cronPeriod understands the schedules a publish CronJob should have: "*/N * * * *"
// (every N minutes) and "0 */N * * *" (every N hours).
func cronPeriod(schedule string) (time.Duration, error) {
	f := strings.Fields(schedule)
	if len(f) != 5 || f[2] != "*" || f[3] != "*" || f[4] != "*" {
		return 0, fmt.Errorf("schedule %q: want */N * * * * or 0 */N * * *", schedule)
	}
	every := func(s string) (int, error) {
		n, err := strconv.Atoi(strings.TrimPrefix(s, "*/"))
		if err != nil || !strings.HasPrefix(s, "*/") || n <= 0 {
			return 0, errors.New("not */N")
		}
		return n, nil
	}
	if n, err := every(f[0]); err == nil && f[1] == "*" && 60%n == 0 {
		return time.Duration(n) * time.Minute, nil
	}
	if n, err := every(f[1]); err == nil && f[0] == "0" && 24%n == 0 {
		return time.Duration(n) * time.Hour, nil
	}
	return 0, fmt.Errorf("schedule %q: want */N * * * * (N dividing 60) or 0 */N * * * (N dividing 24)", schedule)
}
