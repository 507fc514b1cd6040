package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/refresher/refresher/internal/natsserver"
)

// natsNodeCmd runs one nats-server with JetStream in this process until SIGTERM or
// SIGINT: a member of a cluster given its routes, so that tests (and a trial by
// hand) can run a cluster as separate processes and kill -9 one of them, with no
// nats-server binary installed.
func natsNodeCmd(e *env) *cobra.Command {
	var (
		name, store, cluster, routes string
		port, clusterPort            int
	)
	cmd := &cobra.Command{
		Use:    "nats-node",
		Short:  "Run one embedded nats-server with JetStream (a cluster member with --routes)",
		Hidden: true,
		Example: `  refresher nats-node --name n1 --port 4222 --store /tmp/n1 \
    --cluster-port 6222 --routes nats-route://127.0.0.1:6223,nats-route://127.0.0.1:6224`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" || store == "" || port <= 0 {
				return usageError{fmt.Errorf("--name, --store and --port are required")}
			}
			opts := natsserver.Options{Name: name, StoreDir: store, Port: port, Log: e.log}
			if clusterPort > 0 {
				opts.Cluster = &natsserver.ClusterOptions{Name: cluster, Port: clusterPort}
				for _, r := range strings.Split(routes, ",") {
					if r = strings.TrimSpace(r); r != "" {
						opts.Cluster.Routes = append(opts.Cluster.Routes, r)
					}
				}
			}
			s, err := natsserver.Start(opts)
			if err != nil {
				return err
			}
			defer s.Shutdown()
			e.log.Info("nats-node ready", "name", name, "url", s.URL())
			<-cmd.Context().Done()
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "server name (distinct in a cluster)")
	f.StringVar(&store, "store", "", "JetStream store directory")
	f.IntVar(&port, "port", 0, "client port on 127.0.0.1")
	f.StringVar(&cluster, "cluster", "refresher", "cluster name")
	f.IntVar(&clusterPort, "cluster-port", 0, "route port on 127.0.0.1 (0: not clustered)")
	f.StringVar(&routes, "routes", "", "comma-separated route URLs of the other members")
	return cmd
}
