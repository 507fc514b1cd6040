package consumer

import (
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// terminate ends msg's deliveries, with reason where the server takes one. A
// nats-server before 2.10.4 does not know "+TERM <reason>": it ignores it as an
// unknown acknowledgement and delivers the message again after every AckWait, so a
// malformed request or a refused grant would come back forever.
func (c *Consumer) terminate(msg jetstream.Msg, reason string) {
	if termTakesReason(c.js.Conn().ConnectedServerVersion()) {
		_ = msg.TermWithReason(reason)
		return
	}
	_ = msg.Term()
}

// termTakesReason reports whether a nats-server of version ("2.10.4") takes a
// reason with +TERM. An unreadable version gets the plain form, which every server
// takes.
func termTakesReason(version string) bool {
	var major, minor, patch int
	if _, err := fmt.Sscanf(version, "%d.%d.%d", &major, &minor, &patch); err != nil {
		return false
	}
	switch {
	case major != 2:
		return major > 2
	case minor != 10:
		return minor > 10
	default:
		return patch >= 4
	}
}
