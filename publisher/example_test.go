package publisher_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
)

// Application code asks for refreshes of particular credentials, for instance right
// after a user's API call was refused with an expired token. The REFRESH stream must
// exist (a consume process creates it when it starts).
func ExamplePublisher_Publish() {
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	p, err := publisher.New(nc, publisher.WithReason("api call refused"))
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Publish returns once every message is stored (or certainly not): a nil error
	// means the consumers will see each request.
	res, err := p.Publish(ctx, "github", 42, 43)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("published %d, duplicate %d\n", res.Published, res.Duplicate)
}

// A scheduler embedded in an application requests, every 15 minutes, a refresh of
// each active credential of a service whose access token expires within the hour.
// Replicas of it running the same schedule publish each row once per period.
func ExamplePublisher_Schedule() {
	ctx := context.Background()
	db, err := model.Open(ctx, "postgres://refresher@127.0.0.1:5432/refresher", 4)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	p, err := publisher.New(nc, publisher.WithReason("schedule"))
	if err != nil {
		log.Fatal(err)
	}
	scan := publisher.Scan{Service: "github", ExpiringWithin: time.Hour}
	// Schedule runs until ctx ends; each run is reported as it finishes.
	err = p.Schedule(ctx, db, scan, 15*time.Minute, func(r publisher.Run) {
		log.Printf("period %s: %+v (err %v)", r.Window.Format(time.RFC3339), r.Result, r.Err)
	})
	if err != nil {
		log.Fatal(err)
	}
}

// The dedupe id of a request is its subject and the start of its period: a second
// publish of the same row in the same period is acknowledged as a duplicate.
func ExampleMsgID() {
	start := time.Date(2026, 11, 26, 10, 15, 0, 0, time.UTC)
	fmt.Println(publisher.MsgID(model.Key{Service: "github", ID: 42}, start))
	// Output: refresh.github.42@2026-11-26T10:15:00Z
}
