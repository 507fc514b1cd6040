package stream_test

import (
	"testing"

	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/stream"
)

func TestSubject(t *testing.T) {
	tests := []struct {
		service string
		id      int64
		want    string
	}{
		{"github", 42, "refresh.github.42"},
		{"my_svc-2", 9223372036854775807, "refresh.my_svc-2.9223372036854775807"},
		{"a", 1, "refresh.a.1"},
	}
	for _, tt := range tests {
		got := stream.Subject(tt.service, tt.id)
		if got != tt.want {
			t.Errorf("Subject(%q, %d) = %q, want %q", tt.service, tt.id, got, tt.want)
		}
		// model.ParseSubject is its inverse.
		if k, err := model.ParseSubject(got); err != nil || k != (model.Key{Service: tt.service, ID: tt.id}) {
			t.Errorf("ParseSubject(%q) = %+v, %v", got, k, err)
		}
	}
}

func TestSubjectFilters(t *testing.T) {
	tests := []struct {
		name, got, want string
	}{
		{"StreamSubjects", stream.StreamSubjects, "refresh.>"},
		{"DLQSubjects", stream.DLQSubjects, "dlq.refresh.>"},
		{"ServiceSubjects", stream.ServiceSubjects("github"), "refresh.github.*"},
		{"DeadLetterSubject of a request", stream.DeadLetterSubject("refresh.github.7"), "dlq.refresh.github.7"},
		{"DeadLetterSubject of a filter", stream.DeadLetterSubject(stream.ServiceSubjects("google")), "dlq.refresh.google.*"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %q, want %q", tt.name, tt.got, tt.want)
		}
	}
}
