package testtier

import (
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The machine lock lets a test that measures time have the machine to itself, across
// the test binaries `go test ./...` runs side by side (one per package, two at a time
// on two cores). Every slow test holds it shared (Slow), a timing test exclusively
// (Quiet). It is two flock(2) files in the temporary directory: flock locks go with
// the process, so a killed test binary never leaves the machine locked.
//
// The gate gives a waiting Quiet test precedence: a process that is not yet holding
// the machine must pass the gate to take it, and Quiet closes the gate while it
// waits, so the tests already running finish and no new ones start.
var machine = &machineLock{}

// The machine lock's files.
const (
	mainLockName = "refresher-tests-machine.lock"
	gateLockName = "refresher-tests-gate.lock"
)

// machineLock is the process's side of the machine lock, its files in dir (the
// temporary directory when empty).
type machineLock struct {
	sync.Mutex
	dir        string
	main, gate *os.File
	holders    int  // tests of this process holding the machine shared
	quiet      bool // a test of this process holds it exclusively
}

// lockFile opens (creating) one of the machine's lock files.
func (m *machineLock) lockFile(name string) (*os.File, error) {
	dir := m.dir
	if dir == "" {
		dir = os.TempDir()
	}
	return os.OpenFile(filepath.Join(dir, name), os.O_RDWR|os.O_CREATE, 0o666)
}

func flock(t testing.TB, f *os.File, how int) {
	t.Helper()
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if err == nil {
			return
		}
		if err != syscall.EINTR {
			t.Fatalf("testtier: flock %s: %v", f.Name(), err)
		}
	}
}

// open opens the lock files once per process; the caller holds m.
func (m *machineLock) open(t testing.TB) {
	t.Helper()
	if m.main != nil {
		return
	}
	main, err := m.lockFile(mainLockName)
	if err != nil {
		t.Fatalf("testtier: %v", err)
	}
	gate, err := m.lockFile(gateLockName)
	if err != nil {
		main.Close()
		t.Fatalf("testtier: %v", err)
	}
	m.main, m.gate = main, gate
}

// share holds the machine shared until t ends.
func (m *machineLock) share(t testing.TB) {
	t.Helper()
	m.Lock()
	defer m.Unlock()
	if m.holders == 0 && !m.quiet {
		m.open(t)
		flock(t, m.gate, syscall.LOCK_SH)
		flock(t, m.main, syscall.LOCK_SH)
		flock(t, m.gate, syscall.LOCK_UN)
	}
	m.holders++
	t.Cleanup(func() {
		m.Lock()
		defer m.Unlock()
		m.holders--
		if m.holders == 0 && !m.quiet {
			flock(t, m.main, syscall.LOCK_UN)
		}
	})
}

// Quiet gives t the machine to itself among refresher's test binaries: it waits
// until the slow tests of every other package have finished (and starts no new
// ones) and holds them off until t ends. For tests whose assertions are about time
// (a rate seen by the provider), which two packages' fleets on two cores would blur.
// Call it at the top of a test that does not call t.Parallel: the tests of its own
// binary are kept off by the testing package itself.
func Quiet(t testing.TB) {
	t.Helper()
	Slow(t, "a quiet machine")
	machine.quietly(t)
}

// quietly holds the machine exclusively until t ends.
func (m *machineLock) quietly(t testing.TB) {
	t.Helper()
	m.Lock()
	defer m.Unlock()
	m.open(t)
	began := time.Now()
	// Let go of this process's shared hold first: holding it while waiting at the gate
	// would deadlock with another process's Quiet that holds the gate.
	flock(t, m.main, syscall.LOCK_UN)
	flock(t, m.gate, syscall.LOCK_EX)
	flock(t, m.main, syscall.LOCK_EX)
	m.quiet = true
	if waited := time.Since(began); waited > time.Second {
		t.Logf("testtier: waited %s for the other packages' slow tests", waited.Round(time.Millisecond))
	}
	t.Cleanup(func() {
		m.Lock()
		defer m.Unlock()
		m.quiet = false
		if m.holders > 0 {
			flock(t, m.main, syscall.LOCK_SH)
		} else {
			flock(t, m.main, syscall.LOCK_UN)
		}
		flock(t, m.gate, syscall.LOCK_UN)
	})
}
