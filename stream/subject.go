package stream

import (
	"strconv"

	"github.com/refresher/refresher/model"
)

// SubjectPrefix is the first token of every refresh request subject:
// refresh.<service>.<id> (model.SubjectPrefix, which model.ParseSubject checks); the
// streams capture it.
const SubjectPrefix = model.SubjectPrefix

// Subject is the subject of a refresh request for row id of service:
// refresh.<service>.<id>. It does not validate service (model.ValidateService does),
// so that building a subject never fails; model.ParseSubject is its inverse.
func Subject(service string, id int64) string {
	return SubjectPrefix + "." + service + "." + strconv.FormatInt(id, 10)
}

// ServiceSubjects is the subject filter matching every request of service:
// refresh.<service>.*.
func ServiceSubjects(service string) string {
	return SubjectPrefix + "." + service + ".*"
}

// ServiceRequests is the filter of a service's durable consumer: every subject under
// refresh.<service>, so that a malformed one (refresh.<service>.x.y) is dead-lettered
// by that service's durable rather than left to the shared one.
func ServiceRequests(service string) string {
	return SubjectPrefix + "." + service + ".>"
}

// DeadLetterSubject is the subject in REFRESH_DLQ of the dead letter of a request
// published to subject (or the filter matching the dead letters of a filter).
func DeadLetterSubject(subject string) string { return DLQPrefix + subject }
