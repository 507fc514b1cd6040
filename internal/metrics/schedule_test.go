package metrics_test

import (
	"errors"
	"net/http/httptest"
	"testing"

	"github.com/refresher/refresher/internal/metrics"
	"github.com/refresher/refresher/publisher"
)

// TestScheduleRunCounts: every period a scheduler ran or skipped is counted by result,
// and the series exist at zero before the first run.
func TestScheduleRunCounts(t *testing.T) {
	m := metrics.NewSchedule("github")
	srv := httptest.NewServer(metrics.Handler(m))
	defer srv.Close()
	_, fams := scrape(t, srv.URL)
	for _, r := range []string{metrics.PeriodPublished, metrics.PeriodFailed, metrics.PeriodSkipped} {
		if v := value(t, fams, "refresher_publish_periods_total", map[string]string{"service": "github", "result": r}); v != 0 {
			t.Errorf("%s before any run: %v", r, v)
		}
	}
	report := m.ScheduleRun("github")
	report(publisher.Run{})
	report(publisher.Run{Err: errors.New("NATS server unreachable")})
	report(publisher.Run{Skipped: 3})
	_, fams = scrape(t, srv.URL)
	for r, want := range map[string]float64{metrics.PeriodPublished: 2, metrics.PeriodFailed: 1, metrics.PeriodSkipped: 3} {
		if v := value(t, fams, "refresher_publish_periods_total", map[string]string{"service": "github", "result": r}); v != want {
			t.Errorf("%s: %v, want %v", r, v, want)
		}
	}
}
