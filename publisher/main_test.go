package publisher_test

import (
	"testing"

	"github.com/refresher/refresher/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }
