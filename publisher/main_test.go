package publisher_test

import (
	"testing"

	"github.com/refresher/refresher/internal/pgtest"
)

// Tests that own nothing but their database and nats-server (fleettest gives each test
// fresh ones) call t.Parallel. Those that crash, stop or restart a server, kill
// sessions, measure time or load the machine on purpose stay serial: run beside another
// test they would measure it, or be slowed past their bounds by it.
func TestMain(m *testing.M) { pgtest.Main(m) }
