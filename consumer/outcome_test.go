package consumer

import (
	"encoding/json"
	"testing"
)

// TestOutcomesNamedAndCounted: every outcome has its own name (the one logs, metrics
// labels and traces carry) and its own counter, so none is filed as another.
func TestOutcomesNamedAndCounted(t *testing.T) {
	want := map[Outcome]string{
		Refreshed: "refreshed", SkippedFresh: "skipped_fresh", SkippedReauth: "skipped_reauth",
		ReauthRequired: "reauth_required", NotFound: "not_found", Retried: "retried",
		DeadLettered: "dead_lettered", Malformed: "malformed", Interrupted: "interrupted",
	}
	outcomes := Outcomes()
	if len(outcomes) != len(want) {
		t.Fatalf("Outcomes() has %d outcomes, want %d", len(outcomes), len(want))
	}
	names := map[string]bool{undecidedOutcome.String(): true}
	for _, o := range outcomes {
		name := o.String()
		if w, ok := want[o]; ok && name != w {
			t.Errorf("Outcome %d is named %q, want %q", int(o), name, w)
		}
		if name == "" || names[name] {
			t.Errorf("Outcome %d has an empty or repeated name %q", int(o), name)
		}
		names[name] = true
		if b, err := json.Marshal(o); err != nil || string(b) != `"`+name+`"` {
			t.Errorf("Outcome %s marshals to %s (%v), want its name", name, b, err)
		}

		c := &Consumer{}
		c.stats.add(o)
		st := c.Stats()
		for _, p := range outcomes {
			n, w := st.Of(p), int64(0)
			if p == o {
				w = 1
			}
			if n != w {
				t.Errorf("after one %s, Stats counts %d %s, want %d", o, n, p, w)
			}
		}
		if sum := st.Add(st); sum.Of(o) != 2 {
			t.Errorf("Stats.Add: %d %s, want 2", sum.Of(o), o)
		}
	}
}
