package deploy_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/refresher/refresher/internal/testtier"
)

// TestDriftIsCaught breaks the real files one way at a time, as a careless edit of a
// manifest or of the code would, and checks that the checks report it.
func TestDriftIsCaught(t *testing.T) {
	testtier.Slow(t, "the refresher binary (go build)")
	files, goMod := readDeploy(t)
	vs := currentVars()
	if problems := checkAll(files, vs, goMod); len(problems) > 0 {
		t.Fatalf("the unaltered files already have problems: %q", problems)
	}
	tests := []struct {
		name     string
		file     string // in deploy/
		old, new string // first occurrence replaced
		vars     varSet // zero: vs
		want     string // in some problem
	}{
		{name: "compose variable renamed", file: "compose.yaml",
			old: "REFRESHER_DRAIN_TIMEOUT: 30s", new: "REFRESHER_DRAIN_TIMOUT: 30s", want: "sets REFRESHER_DRAIN_TIMOUT, which refresher does not read"},
		{name: "per-service variable of an unlisted service", file: "compose.yaml",
			old: "REFRESHER_SERVICES: github,google", new: "REFRESHER_SERVICES: github", want: "sets REFRESHER_GOOGLE_CLIENT_ID, which refresher does not read (a per-service variable"},
		{name: "listed service without its variables", file: "compose.yaml",
			old: "REFRESHER_SERVICES: github,google", new: "REFRESHER_SERVICES: github,google,gitlab", want: "consume needs REFRESHER_GITLAB_TOKEN_URL"},
		{name: "bad duration value", file: "compose.yaml",
			old: "REFRESHER_DRAIN_TIMEOUT: 30s", new: "REFRESHER_DRAIN_TIMEOUT: 30", want: "REFRESHER_DRAIN_TIMEOUT"},
		{name: "loopback NATS in a container", file: "compose.yaml",
			old: "NATS_URL: nats://nats:4222", new: "NATS_URL: nats://127.0.0.1:4222", want: "loopback is the container itself"},
		{name: "flag renamed", file: "compose.yaml",
			old: `"--every", "15m"`, new: `"--evry", "15m"`, want: "has no flag --evry"},
		{name: "bad flag value", file: "compose.yaml",
			old: `"--every", "15m"`, new: `"--every", "15"`, want: `invalid argument "15" for "--every"`},
		{name: "subcommand renamed", file: "compose.yaml",
			old: `command: ["consume"]`, new: `command: ["consumer"]`, want: `"consumer" is not a refresher command`},
		{name: "compose consumer killed while draining", file: "compose.yaml",
			old: "stop_grace_period: 45s", new: "stop_grace_period: 30s", want: "compose would SIGKILL a draining consumer"},
		{name: "compose token URL on the wrong port", file: "compose.yaml",
			old: "REFRESHER_GITHUB_TOKEN_URL: http://fake-provider:8085/token", new: "REFRESHER_GITHUB_TOKEN_URL: http://fake-provider:8086/token", want: `but fake-provider listens on "0.0.0.0:8085"`},
		{name: "required variable removed from the ConfigMap", file: "k8s/configmap.yaml",
			old: "  REFRESHER_SERVICES: github,google\n", new: "", want: "consume needs REFRESHER_SERVICES"},
		{name: "unquoted number in a ConfigMap", file: "k8s/configmap.yaml",
			old: `REFRESHER_STREAM_REPLICAS: "3"`, new: `REFRESHER_STREAM_REPLICAS: 3`, want: "not a string: quote it"},
		{name: "R1 streams on the 3-node cluster", file: "k8s/configmap.yaml",
			old: `REFRESHER_STREAM_REPLICAS: "3"`, new: `REFRESHER_STREAM_REPLICAS: "1"`, want: "the JetStream cluster of deploy/nats has 3 nodes"},
		{name: "secret key renamed", file: "k8s/secret.example.yaml",
			old: "REFRESHER_GITHUB_CLIENT_SECRET:", new: "REFRESHER_GITHUB_SECRET:", want: "consume needs REFRESHER_GITHUB_CLIENT_SECRET"},
		{name: "envFrom of an undefined ConfigMap", file: "k8s/consume-deployment.yaml",
			old: "name: refresher\n            - secretRef", new: "name: refresher-config\n            - secretRef", want: `references ConfigMap "refresher-config"`},
		{name: "grace period below the drain timeout", file: "k8s/consume-deployment.yaml",
			old: "terminationGracePeriodSeconds: 45", new: "terminationGracePeriodSeconds: 30", want: "the kubelet would SIGKILL a draining consumer"},
		{name: "readiness probe path", file: "k8s/consume-deployment.yaml",
			old: "path: /readyz", new: "path: /ready", want: `readinessProbe.httpGet.path "/ready"`},
		{name: "writable root filesystem", file: "k8s/consume-deployment.yaml",
			old: "readOnlyRootFilesystem: true", new: "readOnlyRootFilesystem: false", want: "readOnlyRootFilesystem: want true"},
		{name: "probes on loopback", file: "k8s/consume-deployment.yaml",
			old: "value: 0.0.0.0:9090", new: "value: 127.0.0.1:9090", want: "probes and scrapes cannot reach it"},
		{name: "KEDA watching the wrong consumer", file: "k8s/consume-scaledobject.yaml",
			old: "consumer: refresher-github", new: "consumer: refresher", want: `consumer "refresher", refresher's durables are "refresher-<service>"`},
		{name: "PDB selecting nothing", file: "k8s/consume-pdb.yaml",
			old: "      app.kubernetes.io/component: consume", new: "      app.kubernetes.io/component: consumer", want: "selects no consume pod"},
		{name: "scheduler without --every restarts in a loop", file: "k8s/scheduler.yaml",
			old: `"--every", "15m", `, new: "", want: "exits when done, but a Deployment restarts it"},
		{name: "CronJob period differs from the publish window", file: "k8s/alternatives/publish-cronjob.yaml",
			old: `schedule: "*/15 * * * *"`, new: `schedule: "*/10 * * * *"`, want: "runs every 10m0s but the publish window is 15m0s"},
		{name: "variable renamed in the code", file: "compose.yaml", old: "", new: "",
			vars: vs.without("REFRESHER_HTTP_ADDR"), want: "sets REFRESHER_HTTP_ADDR, which refresher does not read"},
		{name: "YAML syntax error", file: "k8s/consume-pdb.yaml",
			old: "spec:\n  maxUnavailable: 1", new: "spec:\n\tmaxUnavailable: 1", want: "k8s/consume-pdb.yaml: document 1: yaml:"},
		{name: "NATS user without its password", file: "k8s/secret.example.yaml",
			old: "  REFRESHER_GITHUB_CLIENT_SECRET: CHANGE-ME\n", new: "  REFRESHER_GITHUB_CLIENT_SECRET: CHANGE-ME\n  NATS_USER: refresher\n", want: "NATS_USER=\"refresher\" is set without NATS_PASSWORD"},
		{name: "NATS auth variable misspelt", file: "k8s/secret.example.yaml",
			old: "  REFRESHER_GITHUB_CLIENT_SECRET: CHANGE-ME\n", new: "  REFRESHER_GITHUB_CLIENT_SECRET: CHANGE-ME\n  NATS_CREDENTIALS: /etc/nats/refresher.creds\n", want: "sets NATS_CREDENTIALS, which refresher does not read"},
		{name: "Dockerfile runs as root", file: "Dockerfile",
			old: "USER 65532:65532", new: "USER root", want: "USER root: use a numeric uid"},
		{name: "Dockerfile builds another package", file: "Dockerfile",
			old: "./cmd/refresher\n", new: "./cmd/refresherd\n", want: "builds ./cmd/refresherd"},
		{name: "Dockerfile's Go older than go.mod", file: "Dockerfile",
			old: "FROM golang:1.26 AS build", new: "FROM golang:1.25 AS build", want: "older than go.mod's go"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			altered := map[string][]byte{}
			for k, v := range files {
				altered[k] = v
			}
			src := string(files[tt.file])
			if !strings.Contains(src, tt.old) {
				t.Fatalf("%s no longer contains %q: update this case", tt.file, tt.old)
			}
			altered[tt.file] = []byte(strings.Replace(src, tt.old, tt.new, 1))
			vars := tt.vars
			if vars.global == nil {
				vars = vs
			}
			problems := checkAll(altered, vars, goMod)
			for _, p := range problems {
				if strings.Contains(p, tt.want) {
					t.Logf("caught: %s", p)
					return
				}
			}
			t.Errorf("no problem mentions %q; got %q", tt.want, problems)
		})
	}
}

// TestNATSDriftIsCaught alters copies of deploy/nats the same way (every occurrence).
func TestNATSDriftIsCaught(t *testing.T) {
	tests := []struct {
		name, file, old, new, want string
	}{
		{"periodic sync", "cluster.conf", "sync_interval: always", `sync_interval: "2m"`, "sync_interval is 2m0s, not always"},
		{"unknown field", "cluster.conf", "sync_interval: always", "sync_intervall: always", "unknown field"},
		{"two nodes in one zone", "node-2.conf", `"az:zone-b"`, `"az:zone-a"`, "replicas need distinct zones"},
		{"route to a node that does not exist", "cluster.conf", "nats-route://nats-3:6222", "nats-route://nats-4:6222", "route to nats-4"},
		{"README without the replicas setting", "README.md", "REFRESHER_STREAM_REPLICAS=3", "REFRESHER_STREAM_REPLICAS", "does not mention REFRESHER_STREAM_REPLICAS=3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			entries, err := os.ReadDir("nats")
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				b, err := os.ReadFile(filepath.Join("nats", e.Name()))
				if err != nil {
					t.Fatal(err)
				}
				if e.Name() == tt.file {
					if !strings.Contains(string(b), tt.old) {
						t.Fatalf("%s no longer contains %q: update this case", tt.file, tt.old)
					}
					b = []byte(strings.ReplaceAll(string(b), tt.old, tt.new))
				}
				if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			problems := checkNATS(dir)
			for _, p := range problems {
				if strings.Contains(p, tt.want) {
					t.Logf("caught: %s", p)
					return
				}
			}
			t.Errorf("no problem mentions %q; got %q", tt.want, problems)
		})
	}
}

// TestParseDocuments covers the parser on inputs the real files do not have: JSON,
// empty documents, and what is not a mapping.
func TestParseDocuments(t *testing.T) {
	tests := []struct {
		name, file, src string
		docs            int
		wantErr         string
	}{
		{"json object", "x.json", `{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}`, 1, ""},
		{"multi-document yaml with empties", "x.yaml", "---\na: 1\n---\n---\nb: 2\n", 2, ""},
		{"broken json", "x.json", `{"kind": `, 0, "x.json: document 1"},
		{"a list, not a mapping", "x.yaml", "- a\n- b\n", 0, "want a mapping"},
		{"tab indentation", "x.yaml", "a:\n\tb: 1\n", 0, "x.yaml: document 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			docs, err := parseDocuments(tt.file, []byte(tt.src))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || len(docs) != tt.docs {
				t.Fatalf("got %d documents, %v; want %d", len(docs), err, tt.docs)
			}
		})
	}
}

func TestCronPeriod(t *testing.T) {
	tests := []struct {
		schedule string
		want     string // duration, or "" for an error
	}{
		{"*/15 * * * *", "15m0s"},
		{"*/5 * * * *", "5m0s"},
		{"0 */2 * * *", "2h0m0s"},
		{"*/7 * * * *", ""}, // 7 does not divide the hour: the last run of each hour is short
		{"0,15,30,45 * * * *", ""},
		{"*/15 * * * 1-5", ""},
		{"@hourly", ""},
		{"*/0 * * * *", ""},
	}
	for _, tt := range tests {
		got, err := cronPeriod(tt.schedule)
		switch {
		case tt.want == "" && err == nil:
			t.Errorf("cronPeriod(%q) = %s, want an error", tt.schedule, got)
		case tt.want != "" && (err != nil || got.String() != tt.want):
			t.Errorf("cronPeriod(%q) = %s, %v; want %s", tt.schedule, got, err, tt.want)
		}
	}
}

func TestIsRefresherImage(t *testing.T) {
	for image, want := range map[string]bool{
		"refresher":                            true,
		"refresher:local":                      true,
		"registry.example.com/refresher:0.1.0": true,
		"ghcr.io/acme/refresher@sha256:abcd":   true,
		"nats:2.12-alpine":                     false,
		"postgres:16-alpine":                   false,
		"registry.example.com/refresher-ui:1":  false,
		"":                                     false,
	} {
		if got := isRefresherImage(image); got != want {
			t.Errorf("isRefresherImage(%q) = %v, want %v", image, got, want)
		}
	}
}

// TestNATSAuthAccepted: the NATS authentication and TLS variables are ones refresher
// reads, so setting them (as an operator enabling authentication would) is no drift.
func TestNATSAuthAccepted(t *testing.T) {
	testtier.Slow(t, "the refresher binary (go build)")
	files, goMod := readDeploy(t)
	altered := map[string][]byte{}
	for k, v := range files {
		altered[k] = v
	}
	const anchor = "  REFRESHER_STREAM_REPLICAS: \"3\"\n"
	src := string(files["k8s/configmap.yaml"])
	if !strings.Contains(src, anchor) {
		t.Fatalf("k8s/configmap.yaml no longer contains %q: update this test", anchor)
	}
	altered["k8s/configmap.yaml"] = []byte(strings.Replace(src, anchor, anchor+
		"  NATS_CREDS: /etc/nats/refresher.creds\n  NATS_TLS_CA: /etc/nats/ca.pem\n", 1))
	if problems := checkAll(altered, currentVars(), goMod); len(problems) > 0 {
		t.Errorf("NATS_CREDS and NATS_TLS_CA were reported: %q", problems)
	}
}
