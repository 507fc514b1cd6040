package deploy_test

import (
	"fmt"
	"net"
	"net/url"
	"path"
	"sort"
	"strings"
	"time"
)

// checkCompose checks each compose file that runs refresher: its images are built
// from deploy/Dockerfile, the fleet has several consumers that get time to drain, the
// order of start is migrate first, and every URL names a service of the file.
func checkCompose(m *manifests, vs varSet) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	byFile := map[string][]workload{}
	for _, w := range m.workloads {
		if w.kind == "compose" {
			byFile[w.group] = append(byFile[w.group], w)
		}
	}
	if len(byFile["compose.yaml"]) == 0 {
		bad("compose.yaml runs no refresher service")
	}
	for _, file := range sortedNames(byFile) {
		ws := byFile[file]
		var services map[string]any
		for _, d := range m.docs {
			if d.file == file {
				services = getMap(d.v, "services")
			}
		}
		seen := map[string]bool{}
		var migrate string
		for _, w := range ws {
			seen[w.command()] = true
			if w.command() == "migrate" {
				migrate = w.name
			}
		}
		for _, cmd := range []string{"migrate", "consume", "publish", "fake-provider"} {
			if !seen[cmd] {
				bad("%s: no service runs %s", file, cmd)
			}
		}
		for _, w := range ws {
			problems = append(problems, checkComposeBuild(m, file, w)...)
			cmd := w.command()
			if cmd == "consume" || cmd == "publish" {
				if c := getString(w.service, "depends_on", migrate, "condition"); migrate != "" && c != "service_completed_successfully" {
					bad("%s: depends_on %s: condition %q, want service_completed_successfully (the schema first)", w.where, migrate, c)
				}
			}
			if cmd == "migrate" {
				db := urlHost(w.env["DATABASE_URL"])
				if c := getString(w.service, "depends_on", db, "condition"); c != "service_healthy" {
					bad("%s: depends_on %s (DATABASE_URL's host): condition %q, want service_healthy", w.where, db, c)
				}
			}
			if cmd == "consume" {
				if n, ok := asInt(get(w.service, "deploy", "replicas")); !ok || n < 2 {
					bad("%s: deploy.replicas %v: the fleet wants several consumers", w.where, get(w.service, "deploy", "replicas"))
				}
				drain, err := envDuration(w, vs, "REFRESHER_DRAIN_TIMEOUT")
				if err != nil {
					bad("%s: %v", w.where, err)
					continue
				}
				grace := 10 * time.Second // compose's default
				if s := getString(w.service, "stop_grace_period"); s != "" {
					if grace, err = time.ParseDuration(s); err != nil {
						bad("%s: stop_grace_period %q: %v", w.where, s, err)
					}
				}
				if grace <= drain+httpShutdownTimeout {
					bad("%s: stop_grace_period %s is not above REFRESHER_DRAIN_TIMEOUT (%s) + %s: compose would SIGKILL a draining consumer", w.where, grace, drain, httpShutdownTimeout)
				}
			}
			problems = append(problems, checkComposeURLs(file, w, services)...)
		}
	}
	return problems
}

// checkComposeBuild: the image is built from deploy/Dockerfile with the repository
// root as context.
func checkComposeBuild(m *manifests, file string, w workload) []string {
	b := getMap(w.service, "build")
	if b == nil {
		return []string{w.where + ": no build: it would pull an image named " + getString(w.service, "image") + " instead of building deploy/Dockerfile"}
	}
	ctx := path.Clean(path.Join("deploy", path.Dir(file), getString(b, "context")))
	df := getString(b, "dockerfile")
	if df == "" {
		df = "Dockerfile"
	}
	full := path.Clean(path.Join(ctx, df))
	var problems []string
	if ctx != "." {
		problems = append(problems, fmt.Sprintf("%s: build.context is %s, want the repository root (go.mod)", w.where, ctx))
	}
	rel, ok := strings.CutPrefix(full, "deploy/")
	if _, exists := m.files[rel]; !ok || !exists || rel != "Dockerfile" {
		problems = append(problems, fmt.Sprintf("%s: build.dockerfile resolves to %s, want deploy/Dockerfile", w.where, full))
	}
	return problems
}

// urlHost is the host of a URL ("" if none).
func urlHost(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return u.Hostname()
}

// checkComposeURLs: DATABASE_URL, NATS_URL and token URLs point at services of the
// file, and a token URL pointing at the fake provider uses the port it listens on.
func checkComposeURLs(file string, w workload, services map[string]any) []string {
	var problems []string
	keys := make([]string, 0, len(w.env))
	for k := range w.env {
		if k == "DATABASE_URL" || k == "NATS_URL" || strings.HasSuffix(k, "_TOKEN_URL") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, raw := range strings.Split(w.env[k], ",") {
			u, err := url.Parse(strings.TrimSpace(raw))
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s: %s: %v", w.where, k, err))
				continue
			}
			svc, ok := services[u.Hostname()].(map[string]any)
			if !ok {
				problems = append(problems, fmt.Sprintf("%s: %s names host %q, which is not a service of %s", w.where, k, u.Hostname(), file))
				continue
			}
			var args []string
			for _, a := range getList(svc, "command") {
				args = append(args, scalar(a))
			}
			if firstWord(args) != "fake-provider" {
				continue
			}
			listen, _ := flagValue(args, "listen")
			_, port, err := net.SplitHostPort(listen)
			if err != nil || port != u.Port() {
				problems = append(problems, fmt.Sprintf("%s: %s port %q, but %s listens on %q", w.where, k, u.Port(), u.Hostname(), listen))
			}
			if host, _, _ := net.SplitHostPort(listen); host != "0.0.0.0" {
				problems = append(problems, fmt.Sprintf("%s: %s: fake-provider --listen %q is not reachable from other containers: use 0.0.0.0", w.where, k, listen))
			}
		}
	}
	return problems
}
