// Package testtier splits the tests into two tiers: `go test -short ./...` runs only
// the fast one (no database, no nats-server, no subprocess, nothing that takes more
// than about 100 ms), the full run runs everything.
package testtier

import "testing"

// Slow skips t under -short. needs says what the test needs that the fast tier leaves
// out ("PostgreSQL", "a nats-server", "a subprocess", "seconds of real time"), so the
// skip says why.
func Slow(t testing.TB, needs string) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs " + needs + ": skipped with -short")
	}
}
