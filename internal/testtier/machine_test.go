package testtier

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// TestMain lets this test binary double as the other package: with
// TESTTIER_HOLD_DIR set it takes the machine shared in that directory, says "held",
// and keeps it until its standard input closes.
func TestMain(m *testing.M) {
	if dir := os.Getenv("TESTTIER_HOLD_DIR"); dir != "" {
		holdShared(dir)
		return
	}
	os.Exit(m.Run())
}

// holdT is the testing.TB the helper process hands to share.
type holdT struct{ testing.TB }

func (holdT) Helper()                           {}
func (holdT) Cleanup(func())                    {}
func (holdT) Fatalf(format string, args ...any) { panic(format) }

func holdShared(dir string) {
	m := &machineLock{dir: dir}
	m.share(holdT{})
	os.Stdout.WriteString("held\n")
	_, _ = io.Copy(io.Discard, os.Stdin)
	runtime.KeepAlive(m) // its files' finalizers would let go of the lock
}

// otherPackage starts a process that takes the machine shared in dir; held receives
// once it holds it, release makes it let go and exit.
func otherPackage(t *testing.T, dir string) (held <-chan struct{}, release func()) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "TESTTIER_HOLD_DIR="+dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := make(chan struct{})
	go func() {
		if s := bufio.NewScanner(stdout); s.Scan() && s.Text() == "held" {
			close(h)
		}
	}()
	release = func() {
		stdin.Close()
		_ = cmd.Wait()
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		release()
	})
	return h, release
}

// exclusiveFree reports whether the machine lock in m could be taken exclusively now.
func exclusiveFree(t *testing.T, m *machineLock) bool {
	t.Helper()
	f, err := m.lockFile(mainLockName)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return false
	}
	return true
}

// TestQuietWaitsForOtherPackages: a process holding the machine shared keeps a Quiet
// test waiting until it lets go; while the Quiet test holds the machine, another
// process cannot take it.
func TestQuietWaitsForOtherPackages(t *testing.T) {
	Slow(t, "a subprocess")
	dir := t.TempDir()
	m := &machineLock{dir: dir}

	held, release := otherPackage(t, dir)
	<-held
	if exclusiveFree(t, m) {
		t.Fatal("the machine is free while another process holds it shared")
	}
	got := make(chan struct{})
	go func() {
		t.Run("quiet", func(t *testing.T) {
			m.quietly(t)
			close(got)
		})
	}()
	select {
	case <-got:
		t.Fatal("Quiet took the machine while another process held it")
	case <-time.After(200 * time.Millisecond):
	}
	release()
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("Quiet still waiting 10 s after the other process let go")
	}
}

// TestQuietHoldsOffOtherPackages: while a Quiet test runs, a process that wants the
// machine shared waits, and gets it once the Quiet test ends.
func TestQuietHoldsOffOtherPackages(t *testing.T) {
	Slow(t, "a subprocess")
	dir := t.TempDir()
	m := &machineLock{dir: dir}
	var held <-chan struct{}
	parent := t
	t.Run("quiet", func(t *testing.T) {
		m.quietly(t)
		held, _ = otherPackage(parent, dir)
		select {
		case <-held:
			t.Fatal("another process took the machine during a Quiet test")
		case <-time.After(200 * time.Millisecond):
		}
		m.share(t) // a slow helper inside the Quiet test does not wait for itself
	})
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the other process still waiting 10 s after the Quiet test ended")
	}
}
