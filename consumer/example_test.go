package consumer_test

import (
	"context"
	"fmt"
	"log"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/provider"
)

// A worker embedded in an application: it takes refresh requests from the shared
// durable consumer until SIGTERM, then drains (in-flight provider calls finish and
// commit) and returns.
func ExampleConsumer_Run() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
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
	github, err := provider.NewOAuth2(provider.Config{
		TokenURL:     "https://github.com/login/oauth/access_token",
		ClientID:     "client-id",
		ClientSecret: "client-secret",
		AuthStyle:    provider.AuthStyleParams,
		Timeout:      15 * time.Second,
	})
	if err != nil {
		log.Fatal(err)
	}
	cfg := consumer.DefaultConfig()
	cfg.Concurrency = 64
	// A request for a service missing from this map is dead-lettered.
	c, err := consumer.New(db, nc, map[string]provider.Refresher{"github": github}, cfg)
	if err != nil {
		log.Fatal(err)
	}
	if err := c.Run(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%+v\n", c.Stats())
}

// Configuration errors name the environment variable of the bad value.
func ExampleConfig_Validate() {
	cfg := consumer.DefaultConfig()
	cfg.Concurrency = 4
	cfg.BatchSize = 8
	fmt.Println(cfg.Validate())
	// Output: REFRESHER_BATCH_SIZE=8: must not exceed REFRESHER_CONCURRENCY (4)
}
