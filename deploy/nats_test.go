package deploy_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// natsClusterSize is the number of nodes deploy/nats describes, and so the
// REFRESHER_STREAM_REPLICAS the Kubernetes workloads must use.
const natsClusterSize = 3

// checkNATS parses the cluster configuration in dir with the nats-server version
// refresher is built against (unknown fields are errors) and checks the cluster's
// shape and the durability choice its README explains.
func checkNATS(dir string) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	nodes, err := filepath.Glob(filepath.Join(dir, "node-*.conf"))
	if err != nil {
		return []string{err.Error()}
	}
	if len(nodes) != natsClusterSize {
		bad("%s: %d node-*.conf files, want %d", dir, len(nodes), natsClusterSize)
	}
	names := map[string]string{}
	zones := map[string]string{}
	routes := map[string][]string{} // node file -> route hosts
	var clusterName string
	for _, n := range nodes {
		base := filepath.Base(n)
		opts, err := server.ProcessConfigFile(n)
		if err != nil {
			bad("%s: %v", base, err)
			continue
		}
		if !opts.JetStream || opts.StoreDir == "" {
			bad("%s: JetStream with a store_dir (file storage) is not enabled", base)
		}
		// The choice README.md explains: flush before acknowledging.
		if !opts.SyncAlways {
			bad("%s: jetstream.sync_interval is %s, not always: change README.md's reasoning (and this check) first", base, opts.SyncInterval)
		}
		if opts.ServerName == "" {
			bad("%s: no server_name", base)
		} else if prev, dup := names[opts.ServerName]; dup {
			bad("%s: server_name %s is also %s's", base, opts.ServerName, prev)
		}
		names[opts.ServerName] = base
		if opts.Cluster.Name == "" || opts.Cluster.Port == 0 {
			bad("%s: cluster without a name and port", base)
		}
		if clusterName == "" {
			clusterName = opts.Cluster.Name
		} else if opts.Cluster.Name != clusterName {
			bad("%s: cluster name %q, the others' is %q", base, opts.Cluster.Name, clusterName)
		}
		var hosts []string
		for _, r := range opts.Routes {
			hosts = append(hosts, r.Hostname())
		}
		sort.Strings(hosts)
		if len(hosts) != natsClusterSize {
			bad("%s: %d routes (%v), want one to each of the %d nodes", base, len(hosts), hosts, natsClusterSize)
		}
		routes[base] = hosts
		if opts.JetStreamUniqueTag == "" {
			bad("%s: no jetstream.unique_tag: two replicas of a stream could share a zone", base)
			continue
		}
		zone := ""
		for _, t := range opts.Tags {
			if strings.HasPrefix(t, opts.JetStreamUniqueTag) {
				zone = t
			}
		}
		if zone == "" {
			bad("%s: no server_tags entry starting with the unique_tag %q", base, opts.JetStreamUniqueTag)
		} else if prev, dup := zones[zone]; dup {
			bad("%s: zone tag %s is also %s's: replicas need distinct zones", base, zone, prev)
		}
		zones[zone] = base
	}
	// The routes must reach the nodes by the names they are given.
	for _, base := range sortedNames(routes) {
		for _, h := range routes[base] {
			if _, ok := names[h]; !ok {
				bad("%s: route to %s, which is no node's server_name (%v)", base, h, sortedNames(names))
			}
		}
	}
	readme, err := os.ReadFile(filepath.Join(dir, "README.md"))
	if err != nil {
		return append(problems, err.Error())
	}
	for _, want := range []string{"REFRESHER_STREAM_REPLICAS=3", "sync_interval: always"} {
		if !strings.Contains(string(readme), want) {
			bad("%s/README.md does not mention %s", dir, want)
		}
	}
	return problems
}

// natsServerVersion is the version of the nats-server on PATH, "" if there is none.
func natsServerVersion() (bin, version string) {
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		return "", ""
	}
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		return bin, ""
	}
	m := regexp.MustCompile(`v(\d+)\.(\d+)\.\d+`).FindStringSubmatch(string(out))
	if m == nil {
		return bin, ""
	}
	return bin, m[0]
}

// atLeast210 reports whether a nats-server version knows sync_interval (2.10+).
func atLeast210(version string) bool {
	m := regexp.MustCompile(`v(\d+)\.(\d+)`).FindStringSubmatch(version)
	return m != nil && (atoi(m[1]) > 2 || atoi(m[1]) == 2 && atoi(m[2]) >= 10)
}

// testConfigWithBinary runs `nats-server -t -c file` (test the configuration and exit).
func testConfigWithBinary(bin, file string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "-t", "-c", file).CombinedOutput()
	if err != nil {
		return fmt.Errorf("nats-server -t -c %s: %w: %s", file, err, strings.TrimSpace(string(out)))
	}
	return nil
}
