package consumer

import "time"

// satisfied is the skip rule: a request is already satisfied when the row was
// refreshed after it was made. refreshed_at is when the provider call began, so a
// request made while a refresh was in flight is not mistaken for satisfied by it.
func satisfied(refreshedAt *time.Time, requestedAt time.Time) bool {
	return refreshedAt != nil && refreshedAt.After(requestedAt)
}
