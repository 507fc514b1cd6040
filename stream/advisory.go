package stream

import (
	"encoding/json"
	"errors"
	"fmt"
)

// maxDeliveriesPrefix starts the subject on which JetStream announces that a consumer
// gave up on a message: $JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>.
const maxDeliveriesPrefix = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES."

// MaxDeliveriesSubject is where JetStream announces that the durable consumer durable
// of stream name ran out of deliveries for a message without any handler settling it
// (for instance a process that crashes on it every time). Nothing else says so: the
// message stays in the stream, but no consumer will be given it again, so whoever
// watches this subject must dead-letter it.
func MaxDeliveriesSubject(name, durable string) string {
	return maxDeliveriesPrefix + name + "." + durable
}

// MaxDeliveriesSubjects matches the max-deliveries advisories of every durable of
// stream name, so that one watch covers a fleet whose services consume through
// durables of their own.
func MaxDeliveriesSubjects(name string) string { return MaxDeliveriesSubject(name, "*") }

// MaxDeliveriesAdvisory is the part of a max-deliveries advisory refresher uses.
type MaxDeliveriesAdvisory struct {
	// Stream and Consumer name the durable that gave up.
	Stream   string `json:"stream"`
	Consumer string `json:"consumer"`
	// StreamSeq is the sequence of the message given up on, in Stream.
	StreamSeq uint64 `json:"stream_seq"`
	// Deliveries is how many times it was delivered.
	Deliveries uint64 `json:"deliveries"`
}

// ErrBadAdvisory is returned for an advisory that does not name a message.
var ErrBadAdvisory = errors.New("unreadable max-deliveries advisory")

// ParseMaxDeliveriesAdvisory reads the body of a message on a MaxDeliveriesSubject.
func ParseMaxDeliveriesAdvisory(data []byte) (MaxDeliveriesAdvisory, error) {
	var adv MaxDeliveriesAdvisory
	if err := json.Unmarshal(data, &adv); err != nil {
		return adv, fmt.Errorf("%w: %w", ErrBadAdvisory, err)
	}
	if adv.StreamSeq == 0 {
		return adv, fmt.Errorf("%w: no stream_seq", ErrBadAdvisory)
	}
	return adv, nil
}
