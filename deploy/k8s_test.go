package deploy_test

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/stream"
)

// httpShutdownTimeout mirrors cmd/refresher's: after draining, consume waits up to this
// long for a scrape in progress before it exits.
const httpShutdownTimeout = 5 * time.Second

// envDuration is a duration variable of w, or its default.
func envDuration(w workload, vs varSet, key string) (time.Duration, error) {
	v, ok := w.env[key]
	if !ok {
		v = vs.global[key].Default
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%q: %w", key, v, err)
	}
	return d, nil
}

// httpPort is the port consume serves /healthz, /readyz and /metrics on.
func httpPort(w workload) (int, error) {
	addr := w.env["REFRESHER_HTTP_ADDR"]
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, fmt.Errorf("REFRESHER_HTTP_ADDR=%q: %w", addr, err)
	}
	return strconv.Atoi(p)
}

// asInt reads a YAML integer (or a string holding one).
func asInt(v any) (int, bool) {
	switch n := v.(type) {
	case int:
		return n, true
	case string:
		i, err := strconv.Atoi(n)
		return i, err == nil
	}
	return 0, false
}

// selects reports whether a matchLabels selector picks a pod with labels.
func selects(matchLabels, labels map[string]any) bool {
	if len(matchLabels) == 0 {
		return false
	}
	for k, v := range matchLabels {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// checkKubernetes checks the manifests under deploy/k8s beyond their variables: the
// hardening of every refresher container, the consumer's probes, shutdown and scaling,
// and that each piece the README promises is there. uid is the Dockerfile's USER.
func checkKubernetes(m *manifests, vs varSet, uid, natsNodes int) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	var consumeDeployments []workload
	var schedulers, cronJobs, migrations int
	for _, w := range m.workloads {
		if w.group != "k8s" {
			continue
		}
		problems = append(problems, checkContainerHardening(w, uid)...)
		switch cmd := w.command(); {
		case cmd == "consume" && w.kind == "Deployment":
			consumeDeployments = append(consumeDeployments, w)
			problems = append(problems, checkConsumePod(w, vs)...)
		case cmd == "publish" && w.kind == "Deployment" && hasFlag(w.args, "every"):
			schedulers++
		case cmd == "publish" && w.kind == "CronJob":
			cronJobs++
		case cmd == "migrate" && w.kind == "Job":
			migrations++
		}
		if cmd := w.command(); cmd == "consume" || cmd == "publish" {
			// Both create or update the streams; on the cluster of deploy/nats they must
			// be replicated on every node.
			if got := w.env["REFRESHER_STREAM_REPLICAS"]; got != strconv.Itoa(natsNodes) {
				bad("%s: REFRESHER_STREAM_REPLICAS=%q, want %d: the JetStream cluster of deploy/nats has %d nodes", w.where, got, natsNodes, natsNodes)
			}
		}
	}
	if len(consumeDeployments) == 0 {
		bad("deploy/k8s: no Deployment runs consume")
	}
	if schedulers == 0 {
		bad("deploy/k8s: no Deployment runs the scheduler (publish --every)")
	}
	if cronJobs == 0 {
		bad("deploy/k8s: no CronJob runs publish (the documented alternative to the scheduler)")
	}
	if migrations == 0 {
		bad("deploy/k8s: no Job runs migrate")
	}

	// Disruption budgets and autoscaling must point at the consumer fleet.
	pdbFor := map[string]bool{}
	scaledFor := map[string]bool{}
	for _, d := range m.docs {
		if !d.isKubernetes() {
			continue
		}
		switch getString(d.v, "kind") {
		case "PodDisruptionBudget":
			sel := getMap(d.v, "spec", "selector", "matchLabels")
			matched := false
			for _, w := range consumeDeployments {
				if selects(sel, getMap(w.podMeta, "labels")) {
					pdbFor[w.where], matched = true, true
				}
			}
			if !matched {
				bad("%s: PodDisruptionBudget %s selects no consume pod (matchLabels %v)", d, getString(d.v, "metadata", "name"), sel)
			}
			if d.v["spec"] != nil && getMap(d.v, "spec")["maxUnavailable"] == nil && getMap(d.v, "spec")["minAvailable"] == nil {
				bad("%s: PodDisruptionBudget without maxUnavailable or minAvailable", d)
			}
		case "ScaledObject":
			problems = append(problems, checkScaledObject(d, consumeDeployments, scaledFor)...)
		}
	}
	for _, w := range consumeDeployments {
		if !pdbFor[w.where] {
			bad("%s: no PodDisruptionBudget selects its pods", w.where)
		}
		if !scaledFor[w.where] {
			bad("%s: no KEDA ScaledObject scales it", w.where)
		} else if getMap(w.object, "spec")["replicas"] != nil {
			bad("%s: spec.replicas is set, but its ScaledObject owns the count: every apply would reset it", w.where)
		}
	}
	return problems
}

// checkContainerHardening: non-root, read-only root, no privilege escalation, no
// capabilities, and resources requested and limited.
func checkContainerHardening(w workload, uid int) []string {
	var problems []string
	bad := func(format string, args ...any) {
		problems = append(problems, w.where+": "+fmt.Sprintf(format, args...))
	}
	sc, psc := getMap(w.container, "securityContext"), getMap(w.pod, "securityContext")
	if sc["allowPrivilegeEscalation"] != false {
		bad("securityContext.allowPrivilegeEscalation: want false")
	}
	if sc["readOnlyRootFilesystem"] != true {
		bad("securityContext.readOnlyRootFilesystem: want true (refresher writes no files)")
	}
	dropsAll := false
	for _, c := range getList(sc, "capabilities", "drop") {
		dropsAll = dropsAll || c == "ALL"
	}
	if !dropsAll {
		bad("securityContext.capabilities.drop: want [ALL]")
	}
	if sc["runAsNonRoot"] != true && psc["runAsNonRoot"] != true {
		bad("runAsNonRoot: want true (container or pod securityContext)")
	}
	for _, s := range []map[string]any{sc, psc} {
		if v, ok := s["runAsUser"]; ok && uid != 0 {
			if n, _ := asInt(v); n != uid {
				bad("runAsUser %v differs from the image's USER %d (deploy/Dockerfile)", v, uid)
			}
		}
	}
	for _, k := range []string{"requests.cpu", "requests.memory", "limits.memory"} {
		a, b, _ := strings.Cut(k, ".")
		if get(w.container, "resources", a, b) == nil {
			bad("resources.%s is not set", k)
		}
	}
	return problems
}

// checkConsumePod: probes on the port consume serves, scrape annotations, and a grace
// period the drain fits in.
func checkConsumePod(w workload, vs varSet) []string {
	var problems []string
	bad := func(format string, args ...any) {
		problems = append(problems, w.where+": "+fmt.Sprintf(format, args...))
	}
	port, err := httpPort(w)
	if err != nil {
		return []string{w.where + ": " + err.Error()}
	}
	named := map[string]int{}
	for _, p := range getList(w.container, "ports") {
		if n, ok := asInt(get(p, "containerPort")); ok {
			named[getString(p, "name")] = n
		}
	}
	for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
		hg := getMap(w.container, probe, "httpGet")
		if hg == nil {
			bad("%s: want an httpGet on %s", probe, path)
			continue
		}
		if got := getString(hg, "path"); got != path {
			bad("%s.httpGet.path %q: consume serves %s", probe, got, path)
		}
		p, ok := asInt(hg["port"])
		if name, isName := hg["port"].(string); isName && !ok {
			p, ok = named[name]
		}
		if !ok || p != port {
			bad("%s.httpGet.port %v is not REFRESHER_HTTP_ADDR's port %d", probe, hg["port"], port)
		}
	}
	ann := getMap(w.podMeta, "annotations")
	if getString(ann, "prometheus.io/scrape") != "true" {
		bad(`pod annotation prometheus.io/scrape: want "true"`)
	}
	if getString(ann, "prometheus.io/port") != strconv.Itoa(port) {
		bad("pod annotation prometheus.io/port %q is not REFRESHER_HTTP_ADDR's port %d", getString(ann, "prometheus.io/port"), port)
	}
	if p := getString(ann, "prometheus.io/path"); p != "" && p != "/metrics" {
		bad("pod annotation prometheus.io/path %q: consume serves /metrics", p)
	}
	drain, err := envDuration(w, vs, "REFRESHER_DRAIN_TIMEOUT")
	if err != nil {
		return append(problems, w.where+": "+err.Error())
	}
	grace, ok := asInt(w.pod["terminationGracePeriodSeconds"])
	if !ok {
		grace = 30 // Kubernetes' default
	}
	if need := drain + httpShutdownTimeout; time.Duration(grace)*time.Second <= need {
		bad("terminationGracePeriodSeconds %d is not above REFRESHER_DRAIN_TIMEOUT (%s) + the metrics server's shutdown (%s): the kubelet would SIGKILL a draining consumer", grace, drain, httpShutdownTimeout)
	}
	return problems
}

// checkScaledObject checks a KEDA ScaledObject targets a consume Deployment and scales
// on the backlog of the fleet's durable consumer; scaled records which it targets.
func checkScaledObject(d document, consumes []workload, scaled map[string]bool) []string {
	var problems []string
	bad := func(format string, args ...any) {
		problems = append(problems, d.String()+": "+fmt.Sprintf(format, args...))
	}
	ref := getMap(d.v, "spec", "scaleTargetRef")
	target := getString(ref, "name")
	if k := getString(ref, "kind"); k != "" && k != "Deployment" {
		bad("scaleTargetRef.kind %s: the consumers are a Deployment", k)
	}
	found := false
	for _, w := range consumes {
		if getString(w.object, "metadata", "name") == target {
			scaled[w.where], found = true, true
		}
	}
	if !found {
		bad("scaleTargetRef.name %q is not a Deployment running consume", target)
	}
	if n, ok := asInt(get(d.v, "spec", "minReplicaCount")); !ok || n < 1 {
		bad("spec.minReplicaCount %v: want at least 1, or single requests wait for a scale-up", get(d.v, "spec", "minReplicaCount"))
	}
	triggers := 0
	for _, t := range getList(d.v, "spec", "triggers") {
		if getString(t, "type") != "nats-jetstream" {
			continue
		}
		triggers++
		md := getMap(t, "metadata")
		if s := getString(md, "stream"); s != stream.Stream {
			bad("nats-jetstream trigger: stream %q, refresher's is %q", s, stream.Stream)
		}
		if c := getString(md, "consumer"); !strings.HasPrefix(c, consumer.Durable+"-") || model.ValidateService(strings.TrimPrefix(c, consumer.Durable+"-")) != nil {
			bad("nats-jetstream trigger: consumer %q, refresher's durables are %q", c, consumer.ServiceDurable("<service>"))
		}
		if getString(md, "account") == "" {
			bad(`nats-jetstream trigger: no account ("$G" without NATS accounts)`)
		}
		if _, _, err := net.SplitHostPort(getString(md, "natsServerMonitoringEndpoint")); err != nil {
			bad("nats-jetstream trigger: natsServerMonitoringEndpoint %q: want host:port of the monitoring port", getString(md, "natsServerMonitoringEndpoint"))
		}
		if n, err := strconv.Atoi(getString(md, "lagThreshold")); err != nil || n <= 0 {
			bad("nats-jetstream trigger: lagThreshold %q: want a positive number, quoted", getString(md, "lagThreshold"))
		}
	}
	if triggers == 0 {
		bad("no nats-jetstream trigger")
	}
	return problems
}
