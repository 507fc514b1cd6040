package pgserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// tempPrefix names throwaway cluster directories, so stale ones can be found.
const tempPrefix = "refresher-pg-"

// ownerFile, inside a cluster directory, holds the pid of the process that made it;
// a directory whose owner is gone is left over from a crash and may be reaped.
const ownerFile = "owner.pid"

// binDirGlobs are where distributions install server binaries that are not on PATH
// (Debian/Ubuntu keep initdb and postgres out of PATH; RHEL uses /usr/pgsql-N).
var binDirGlobs = []string{
	"/usr/lib/postgresql/*/bin",
	"/usr/pgsql-*/bin",
	"/usr/local/pgsql/bin",
}

// serverSettings are appended to postgresql.conf. Durability is pointless for a
// throwaway cluster and fsync dominates test time; shared_buffers is kept small
// because several test binaries may each run a cluster at once.
const serverSettings = `
# added by refresher/internal/pgserver for a throwaway test cluster
listen_addresses = '127.0.0.1'
unix_socket_directories = '%s'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = '32MB'
`

// cluster is a PostgreSQL cluster in a temp dir, run as a child of this process.
//
// The postmaster is started directly rather than through pg_ctl so that it is our
// child with a parent-death signal: a test binary killed by -timeout or a demo killed
// with SIGKILL takes its database down with it instead of leaving it running.
type cluster struct {
	root, dataDir, sockDir, logPath string
	postgres                        string // path of the postgres binary
	cred                            *syscall.Credential
	log                             *slog.Logger
	settings                        []string // extra postgresql.conf lines

	mu        sync.Mutex
	port      int
	proc      *os.Process
	done      chan struct{} // closed when proc has exited
	destroyed bool
}

// StartThrowaway initialises and starts a new cluster in a temp directory on a free
// 127.0.0.1 port with trust authentication, whatever else is running; Discover uses
// it as its last resort. Call Stop to shut it down and delete it. log may be nil.
//
// settings are extra postgresql.conf lines (like "max_connections = 50"), written
// after the defaults above so that they win.
func StartThrowaway(ctx context.Context, log *slog.Logger, settings ...string) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	initdb, postgres, err := findBinaries(os.Getenv("PATH"), binDirGlobs)
	if err != nil {
		return nil, fmt.Errorf("cannot start a throwaway cluster: %w", err)
	}
	reapStale(os.TempDir(), log)

	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}
	root, err := os.MkdirTemp("", tempPrefix)
	if err != nil {
		return nil, fmt.Errorf("throwaway PostgreSQL: %w", err)
	}
	c := &cluster{
		root:     root,
		dataDir:  filepath.Join(root, "data"),
		sockDir:  filepath.Join(root, "sock"),
		logPath:  filepath.Join(root, "postgres.log"),
		postgres: postgres,
		cred:     cred,
		log:      log,
		settings: settings,
	}
	fail := func(err error) (*Server, error) {
		_ = os.RemoveAll(root)
		return nil, fmt.Errorf("throwaway PostgreSQL in %s: %w", root, err)
	}
	if err := c.prepare(ctx, initdb); err != nil {
		return fail(err)
	}
	// The free port is found by binding and releasing it, so another process may take
	// it before postgres binds; a bind failure is retried on a new port.
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return fail(err)
		}
		err = c.start(ctx, port)
		if err == nil {
			break
		}
		if attempt == 3 || !errors.Is(err, errPortInUse) {
			return fail(err)
		}
		log.Debug("PostgreSQL: port taken, retrying", "port", port)
	}
	s := &Server{AdminURL: adminURL(c.port), Owned: true, c: c}
	log.Info("PostgreSQL: started throwaway cluster", "url", s.AdminURL, "dir", root)
	return s, nil
}

func adminURL(port int) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
}

// serverCredential returns whom to run initdb and postgres as: they refuse to run
// as root, so root hands them to the postgres OS user; anyone else runs them as
// themselves (nil).
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("throwaway PostgreSQL: running as root, and initdb refuses root, "+
			"but there is no 'postgres' OS user to run it as (%w); create one or set DATABASE_URL", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("throwaway PostgreSQL: postgres user has non-numeric uid/gid %q/%q", u.Uid, u.Gid)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

// prepare runs initdb and writes the settings; root must exist.
func (c *cluster) prepare(ctx context.Context, initdb string) error {
	if err := os.WriteFile(filepath.Join(c.root, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return fmt.Errorf("write owner file: %w", err)
	}
	if err := os.Mkdir(c.sockDir, 0o700); err != nil {
		return fmt.Errorf("create socket dir: %w", err)
	}
	if c.cred != nil {
		for _, p := range []string{c.root, c.sockDir} {
			if err := os.Chown(p, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
				return fmt.Errorf("hand %s to the postgres user: %w", p, err)
			}
		}
	}
	cmd := exec.CommandContext(ctx, initdb,
		"-D", c.dataDir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")
	c.setupCmd(cmd)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w\n%s", initdb, err, strings.TrimSpace(out.String()))
	}
	conf := filepath.Join(c.dataDir, "postgresql.conf")
	f, err := os.OpenFile(conf, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open postgresql.conf: %w", err)
	}
	_, err = fmt.Fprintf(f, serverSettings, c.sockDir)
	for _, line := range c.settings {
		if err == nil {
			_, err = fmt.Fprintln(f, line)
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write postgresql.conf: %w", err)
	}
	return nil
}

// setupCmd makes cmd run inside root as the server user, without PG* variables
// that could point it at another cluster.
func (c *cluster) setupCmd(cmd *exec.Cmd) {
	cmd.Dir = c.root // the postgres user may not be able to enter our working directory
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "PG") })
	cmd.Env = append(cmd.Env, "LC_ALL=C")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
}

var errPortInUse = errors.New("port in use")

// start runs the postmaster on port and waits until it accepts connections.
func (c *cluster) start(ctx context.Context, port int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.destroyed {
		return errors.New("cluster was stopped")
	}
	if c.proc != nil {
		return errors.New("server is already running")
	}
	logf, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("open server log: %w", err)
	}
	logStart, _ := logf.Seek(0, io.SeekEnd)
	cmd := exec.Command(c.postgres, "-D", c.dataDir, "-p", strconv.Itoa(port))
	c.setupCmd(cmd)
	cmd.Stdout, cmd.Stderr = logf, logf
	// SIGQUIT is PostgreSQL's immediate shutdown. Setpgid keeps a terminal's Ctrl-C
	// away from the server, so the demo can still use it while shutting down.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	cmd.SysProcAttr.Setpgid = true

	// The parent-death signal fires when the *thread* that forked exits, so fork from
	// a locked thread that lives exactly as long as the child: this goroutine.
	started := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the child
		defer close(done)
		defer logf.Close()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("start %s: %w", c.postgres, err)
	}
	c.proc, c.done, c.port = cmd.Process, done, port

	if err := c.waitReady(ctx, done); err != nil {
		c.stopLocked(ctx)
		tail := c.logSince(logStart)
		if strings.Contains(tail, "could not bind") || strings.Contains(tail, "already in use") {
			err = fmt.Errorf("%w: %w", errPortInUse, err)
		}
		return fmt.Errorf("postgres on port %d: %w\n%s", port, err, tail)
	}
	return nil
}

// waitReady polls until the server accepts a connection, the postmaster exits, or
// a minute passes (crash recovery after an immediate shutdown can take a while).
func (c *cluster) waitReady(ctx context.Context, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		conn, err := connect(ctx, adminURL(c.port))
		if err == nil {
			_ = conn.Close(ctx)
			return nil
		}
		lastErr = err
		select {
		case <-exited:
			return errors.New("server exited during start-up")
		case <-ctx.Done():
			return fmt.Errorf("not ready: %w (last error: %w)", ctx.Err(), lastErr)
		case <-tick.C:
		}
	}
}

// logSince returns what the server logged after offset, to explain a failed start.
func (c *cluster) logSince(offset int64) string {
	b, err := os.ReadFile(c.logPath)
	if err != nil || offset > int64(len(b)) {
		return ""
	}
	b = b[offset:]
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return strings.TrimSpace(string(b))
}

// stopLocked shuts the postmaster down: fast (disconnect clients, checkpoint), then
// immediate, then SIGKILL if it will not go. c.mu must be held.
func (c *cluster) stopLocked(ctx context.Context) {
	if c.proc == nil {
		return
	}
	for _, step := range []struct {
		sig  syscall.Signal
		wait time.Duration
	}{{syscall.SIGINT, 30 * time.Second}, {syscall.SIGQUIT, 10 * time.Second}, {syscall.SIGKILL, 10 * time.Second}} {
		_ = c.proc.Signal(step.sig)
		t := time.NewTimer(step.wait)
		select {
		case <-c.done:
			t.Stop()
			c.proc, c.done = nil, nil
			return
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		c.log.Warn("PostgreSQL: throwaway server did not stop, escalating", "signal", step.sig, "dir", c.root)
	}
	c.proc, c.done = nil, nil
}

func (c *cluster) pause(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.destroyed {
		return errors.New("pause: cluster was stopped")
	}
	if c.proc == nil {
		return errors.New("pause: server is not running")
	}
	c.stopLocked(ctx)
	return nil
}

// crash stops the server as `pg_ctl stop -m immediate` does (SIGQUIT to the
// postmaster): no checkpoint, no flush of WAL still in shared memory, crash recovery
// on the next start.
func (c *cluster) crash(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.destroyed || c.proc == nil {
		return errors.New("crash: server is not running")
	}
	_ = c.proc.Signal(syscall.SIGQUIT)
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-c.done:
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		_ = c.proc.Kill()
		<-c.done
	}
	c.proc, c.done = nil, nil
	return nil
}

func (c *cluster) resume(ctx context.Context) error {
	c.mu.Lock()
	port := c.port
	c.mu.Unlock()
	if err := c.start(ctx, port); err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	return nil
}

func (c *cluster) destroy(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.destroyed {
		return nil
	}
	c.destroyed = true
	c.stopLocked(ctx)
	if err := os.RemoveAll(c.root); err != nil {
		return fmt.Errorf("remove throwaway cluster: %w", err)
	}
	c.log.Info("PostgreSQL: removed throwaway cluster", "dir", c.root)
	return nil
}

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// findBinaries returns initdb and postgres from one directory (they must be the
// same version): the directory of initdb found on pathList, else the newest
// matching one of globs. The error wraps ErrNotFound.
func findBinaries(pathList string, globs []string) (initdb, postgres string, err error) {
	var dirs []string
	for _, d := range filepath.SplitList(pathList) {
		if d == "" {
			continue
		}
		p := filepath.Join(d, "initdb")
		if !isExecutable(p) {
			continue
		}
		// Debian symlinks initdb into /usr/local/bin or /usr/bin; postgres sits
		// next to the real file.
		if real, err := filepath.EvalSymlinks(p); err == nil {
			dirs = append(dirs, filepath.Dir(real))
		}
		dirs = append(dirs, d)
	}
	var globbed []string
	for _, g := range globs {
		m, _ := filepath.Glob(g)
		globbed = append(globbed, m...)
	}
	slices.SortStableFunc(globbed, func(a, b string) int { return compareVersions(b, a) })
	dirs = append(dirs, globbed...)
	for _, d := range dirs {
		i, p := filepath.Join(d, "initdb"), filepath.Join(d, "postgres")
		if isExecutable(i) && isExecutable(p) {
			return i, p, nil
		}
	}
	return "", "", fmt.Errorf("no PostgreSQL server binaries (initdb and postgres) on PATH or in %s; %w",
		strings.Join(globs, ", "), ErrNotFound)
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

var versionRE = regexp.MustCompile(`\d+`)

// compareVersions orders paths by the numbers in them, so ".../15/bin" > ".../9.6/bin".
func compareVersions(a, b string) int {
	na, nb := versionRE.FindAllString(a, -1), versionRE.FindAllString(b, -1)
	for i := 0; i < len(na) && i < len(nb); i++ {
		x, _ := strconv.Atoi(na[i])
		y, _ := strconv.Atoi(nb[i])
		if x != y {
			return x - y
		}
	}
	return len(na) - len(nb)
}

// reapStale deletes throwaway cluster directories in tmp whose owning process has
// died without calling Stop (a killed test binary). Its server died with it (the
// parent-death signal), so a directory whose postmaster still runs is left alone.
func reapStale(tmp string, log *slog.Logger) {
	dirs, _ := filepath.Glob(filepath.Join(tmp, tempPrefix+"*"))
	for _, d := range dirs {
		// No owner file: being created right now, or not ours.
		owner, ok := readPID(filepath.Join(d, ownerFile))
		if !ok || processAlive(owner) {
			continue
		}
		if pm, ok := readPID(filepath.Join(d, "data", "postmaster.pid")); ok && processAlive(pm) {
			log.Warn("PostgreSQL: stale throwaway cluster still running; not removing it", "dir", d, "pid", pm)
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			log.Warn("PostgreSQL: cannot remove stale throwaway cluster", "dir", d, "err", err)
			continue
		}
		log.Info("PostgreSQL: removed stale throwaway cluster", "dir", d)
	}
}

// readPID reads a pid from the first line of a file.
func readPID(p string) (int, bool) {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	return pid, err == nil && pid > 0
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
