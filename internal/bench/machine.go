package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
)

// Machine names what the figures were measured on: they mean little without it.
type Machine struct {
	CPUModel    string `json:"cpu_model"`
	Cores       int    `json:"cores"`
	GOMAXPROCS  int    `json:"gomaxprocs"`
	MemTotalMiB int64  `json:"mem_total_mib"`
	Kernel      string `json:"kernel"`
	GoVersion   string `json:"go_version"`
	// LoadAvgStart and LoadAvgEnd (1, 5, 15 minutes) show whether something else was
	// competing for the cores during the run.
	LoadAvgStart string `json:"loadavg_start"`
	LoadAvgEnd   string `json:"loadavg_end"`

	PostgreSQL          string `json:"postgresql"`
	PGMaxConnections    int    `json:"pg_max_connections"`
	PGSynchronousCommit string `json:"pg_synchronous_commit"`
	PGFsync             string `json:"pg_fsync"`
	PGSharedBuffers     string `json:"pg_shared_buffers"`
	// PGOtherBackends is how many client connections other than the bench's were open
	// at the start: the server may be shared.
	PGOtherBackends int `json:"pg_other_backends"`

	NATSServer  string `json:"nats_server"`
	NATSStorage string `json:"nats_storage"`

	// PoolCap is the most connections one pool of the bench may hold, and why.
	PoolCap       int    `json:"pool_cap"`
	PoolCapReason string `json:"pool_cap_reason"`
}

// machine reads the host, PostgreSQL and nats-server descriptions.
func (r *rig) machine(ctx context.Context) (Machine, error) {
	m := Machine{
		CPUModel:     cpuModel(),
		Cores:        runtime.NumCPU(),
		GOMAXPROCS:   runtime.GOMAXPROCS(0),
		MemTotalMiB:  memTotalMiB(),
		Kernel:       strings.TrimSpace(readFile("/proc/sys/kernel/osrelease")),
		GoVersion:    runtime.Version(),
		LoadAvgStart: loadAvg(),
		NATSServer:   r.nc.ConnectedServerVersion(),
		NATSStorage:  "JetStream file store, in-process",
	}
	err := r.admin.QueryRow(ctx, `SELECT current_setting('server_version'),
		current_setting('max_connections')::int, current_setting('synchronous_commit'),
		current_setting('fsync'), current_setting('shared_buffers'),
		(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'
			AND datname IS DISTINCT FROM $1 AND pid <> pg_backend_pid())::int`, r.dbName).
		Scan(&m.PostgreSQL, &m.PGMaxConnections, &m.PGSynchronousCommit, &m.PGFsync, &m.PGSharedBuffers, &m.PGOtherBackends)
	if err != nil {
		return m, fmt.Errorf("read PostgreSQL settings: %w", err)
	}
	return m, nil
}

// cpuModel is the first "model name" of /proc/cpuinfo, or "unknown" elsewhere.
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown (" + runtime.GOARCH + ")"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown (" + runtime.GOARCH + ")"
}

// memTotalMiB is MemTotal from /proc/meminfo, 0 when unknown.
func memTotalMiB() int64 {
	for _, line := range strings.Split(readFile("/proc/meminfo"), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb / 1024
		}
	}
	return 0
}

// loadAvg is the three load averages of /proc/loadavg.
func loadAvg() string {
	f := strings.Fields(readFile("/proc/loadavg"))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func readFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return string(b)
}
