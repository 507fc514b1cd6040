package stream_test

import (
	"errors"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/refresher/refresher/stream"
)

func TestMaxDeliveriesSubject(t *testing.T) {
	tests := []struct {
		name, got, want string
	}{
		{"shared durable", stream.MaxDeliveriesSubject(stream.Stream, "refresher"), "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.REFRESH.refresher"},
		{"a service's durable", stream.MaxDeliveriesSubject(stream.Stream, "refresher-github"), "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.REFRESH.refresher-github"},
		{"every durable", stream.MaxDeliveriesSubjects(stream.Stream), "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.REFRESH.*"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, tt.got, tt.want)
		}
	}
	// The wildcard covers each durable's subject, and nothing of another stream.
	for _, durable := range []string{"refresher", "refresher-github", "refresher-my_svc-2"} {
		if !server.SubjectMatchesFilter(stream.MaxDeliveriesSubject(stream.Stream, durable), stream.MaxDeliveriesSubjects(stream.Stream)) {
			t.Errorf("%s does not match durable %s", stream.MaxDeliveriesSubjects(stream.Stream), durable)
		}
	}
	if server.SubjectMatchesFilter(stream.MaxDeliveriesSubject(stream.DLQStream, "refresher"), stream.MaxDeliveriesSubjects(stream.Stream)) {
		t.Errorf("%s matches an advisory of %s", stream.MaxDeliveriesSubjects(stream.Stream), stream.DLQStream)
	}
}

func TestParseMaxDeliveriesAdvisory(t *testing.T) {
	tests := []struct {
		name    string
		data    string
		want    stream.MaxDeliveriesAdvisory
		wantErr bool
	}{
		{"as the server sends it",
			`{"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"x","timestamp":"2026-01-01T00:00:00Z","stream":"REFRESH","consumer":"refresher","stream_seq":42,"deliveries":5}`,
			stream.MaxDeliveriesAdvisory{Stream: "REFRESH", Consumer: "refresher", StreamSeq: 42, Deliveries: 5}, false},
		{"no sequence", `{"stream":"REFRESH","consumer":"refresher","deliveries":5}`, stream.MaxDeliveriesAdvisory{}, true},
		{"not JSON", `max deliveries`, stream.MaxDeliveriesAdvisory{}, true},
		{"empty", ``, stream.MaxDeliveriesAdvisory{}, true},
	}
	for _, tt := range tests {
		got, err := stream.ParseMaxDeliveriesAdvisory([]byte(tt.data))
		if tt.wantErr {
			if !errors.Is(err, stream.ErrBadAdvisory) {
				t.Errorf("%s: error %v, want ErrBadAdvisory", tt.name, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s: %+v, %v; want %+v", tt.name, got, err, tt.want)
		}
	}
}
