package stream_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/stream"
)

// TestTransientSetupError: what an election or a restart may cure is tried again;
// what no retry will change is not.
func TestTransientSetupError(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"no error", nil, false},
		{"timeout", context.DeadlineExceeded, true},
		{"no responders", jetstream.ErrNoStreamResponse, true},
		{"cluster not ready", &jetstream.APIError{Code: 503, ErrorCode: 10008}, true},
		{"connection closed", fmt.Errorf("create stream REFRESH: %w", nats.ErrConnectionClosed), false},
		{"authorization", nats.ErrAuthorization, false},
		{"permission", nats.ErrPermissionViolation, false},
		{"replicas on one server", fmt.Errorf("create stream REFRESH: %w", &jetstream.APIError{Code: 500, ErrorCode: 10074}), false},
		{"subjects overlap", &jetstream.APIError{Code: 400, ErrorCode: 10065}, false},
		{"anything else", errors.New("something"), true},
	}
	for _, tt := range tests {
		if got := stream.TransientSetupError(tt.err); got != tt.want {
			t.Errorf("%s: TransientSetupError(%v) = %v, want %v", tt.name, tt.err, got, tt.want)
		}
	}
}
