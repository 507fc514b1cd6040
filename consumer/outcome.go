package consumer

import "fmt"

// Outcome is what handling one message came to. The outcomes are one list: each has
// a name (String, used in logs, metrics labels and traces) and a counter in Stats,
// both indexed by the value, so adding one here is all it takes to count and name it.
type Outcome int

// Outcomes, as counted in Stats and logged.
const (
	// undecidedOutcome is no outcome yet: the request needs a provider call, or waits
	// (decide's answer then). It is never counted as one.
	undecidedOutcome Outcome = iota
	// Refreshed: the provider issued a token and it was stored.
	Refreshed
	// SkippedFresh: the row was refreshed after the request was made.
	SkippedFresh
	// SkippedReauth: the credential awaits the user's sign-in; no call is made.
	SkippedReauth
	// ReauthRequired: the provider refused the grant (invalid_grant).
	ReauthRequired
	// NotFound: no such credential (deleted).
	NotFound
	// Retried: sent back to the stream with a delay.
	Retried
	// DeadLettered: retried MaxDeliver times, then copied to the dead-letter stream.
	DeadLettered
	// Malformed: not a valid request; copied to the dead-letter stream.
	Malformed
	// Interrupted: shutdown began before the provider call; returned to the stream.
	Interrupted
	// numOutcomes sizes the tables indexed by Outcome; it is not an outcome.
	numOutcomes
)

// outcomeNames are the names of the outcomes, as logs, metrics and tests know them.
var outcomeNames = [numOutcomes]string{
	undecidedOutcome: "undecided",
	Refreshed:        "refreshed",
	SkippedFresh:     "skipped_fresh",
	SkippedReauth:    "skipped_reauth",
	ReauthRequired:   "reauth_required",
	NotFound:         "not_found",
	Retried:          "retried",
	DeadLettered:     "dead_lettered",
	Malformed:        "malformed",
	Interrupted:      "interrupted",
}

// String is the outcome's name, as logged and used as a metrics label.
func (o Outcome) String() string {
	if o < 0 || o >= numOutcomes {
		return fmt.Sprintf("Outcome(%d)", int(o))
	}
	return outcomeNames[o]
}

// MarshalText makes log handlers (JSON included) write the outcome's name, not its
// number.
func (o Outcome) MarshalText() ([]byte, error) { return []byte(o.String()), nil }

// Outcomes lists every outcome a message can come to, in Stats order.
func Outcomes() []Outcome {
	out := make([]Outcome, 0, numOutcomes-1)
	for o := undecidedOutcome + 1; o < numOutcomes; o++ {
		out = append(out, o)
	}
	return out
}
