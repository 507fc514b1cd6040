package deploy_test

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/refresher/refresher/internal/testtier"
)

// refresher is the binary built from ./cmd/refresher for this run.
var refresher *binary

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		// The fast tier builds nothing: the tests that run the binary skip.
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "refresher-deploy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin, err := buildBinary(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	refresher = &binary{path: bin}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// checkAll runs every check on files (deploy/ in memory) against the variables vs and
// the built binary, and returns what is wrong.
func checkAll(files map[string][]byte, vs varSet, goMod string) []string {
	m := parseManifests(files)
	problems := append([]string{}, m.problems...)
	for _, w := range m.workloads {
		problems = append(problems, checkEnvironment(w, vs)...)
		problems = append(problems, checkCommand(refresher, w)...)
		problems = append(problems, checkLifecycle(w)...)
		problems = append(problems, checkSchedule(w, vs)...)
	}
	problems = append(problems, checkStreamAgreement(m)...)
	uid, p := checkDockerfile(string(files["Dockerfile"]), goMod)
	problems = append(problems, p...)
	problems = append(problems, checkKubernetes(m, vs, uid, natsClusterSize)...)
	problems = append(problems, checkCompose(m, vs)...)
	return problems
}

// checkStreamAgreement: the processes deployed together that create or update the
// streams (consume, publish) must give them the same settings, or each start would
// change the streams back.
func checkStreamAgreement(m *manifests) []string {
	var problems []string
	first := map[string]workload{}
	for _, w := range m.workloads {
		if cmd := w.command(); cmd != "consume" && cmd != "publish" {
			continue
		}
		ref, ok := first[w.group]
		if !ok {
			first[w.group] = w
			continue
		}
		for _, k := range []string{"REFRESHER_STREAM_REPLICAS", "REFRESHER_STREAM_MAX_AGE", "REFRESHER_STREAM_DUPLICATE_WINDOW", "REFRESHER_DLQ_MAX_AGE"} {
			if w.env[k] != ref.env[k] {
				problems = append(problems, fmt.Sprintf("%s: %s=%q but %s has %q: every process creating the streams must agree", w.where, k, w.env[k], ref.where, ref.env[k]))
			}
		}
	}
	return problems
}

// readDeploy reads deploy/ and go.mod for a test.
func readDeploy(t *testing.T) (map[string][]byte, string) {
	t.Helper()
	files, err := deployFiles(".")
	if err != nil {
		t.Fatal(err)
	}
	goMod, err := os.ReadFile(filepath.Join("..", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	return files, string(goMod)
}

func report(t *testing.T, problems []string) {
	t.Helper()
	for _, p := range problems {
		t.Error(p)
	}
}

// TestManifestsParse: every YAML and JSON file under deploy/ parses, and the
// workloads the README describes are found (so the other tests are not vacuous).
func TestManifestsParse(t *testing.T) {
	files, _ := readDeploy(t)
	m := parseManifests(files)
	report(t, m.problems)
	manifests := 0
	for name := range files {
		if isManifest(name) {
			manifests++
		}
	}
	if manifests < 8 {
		t.Errorf("found %d YAML/JSON files under deploy/, expected the compose files and deploy/k8s", manifests)
	}
	want := map[string]int{ // group/command -> at least
		"compose.yaml/consume": 1, "compose.yaml/publish": 2, "compose.yaml/migrate": 1, "compose.yaml/fake-provider": 1,
		"k8s/consume": 1, "k8s/publish": 4, "k8s/migrate": 1,
	}
	for key, n := range want {
		group, cmd, _ := strings.Cut(key, "/")
		if got := len(m.byCommand(group, cmd)); got < n {
			t.Errorf("%s: %d workloads run %s, want at least %d", group, got, cmd, n)
		}
	}
	for _, w := range m.workloads {
		t.Logf("%s: refresher %s (%d variables)", w.where, strings.Join(w.args, " "), len(w.env))
	}
}

// TestManifestEnvironment: every variable a manifest sets is one refresher reads, every
// variable its command needs is set, and the values load as the binary loads them.
func TestManifestEnvironment(t *testing.T) {
	files, _ := readDeploy(t)
	vs := currentVars()
	m := parseManifests(files)
	report(t, m.problems)
	for _, w := range m.workloads {
		report(t, checkEnvironment(w, vs))
	}
	report(t, checkStreamAgreement(m))
}

// TestManifestCommands: every command line is a refresher subcommand with flags it
// has and values it accepts, fits how the platform runs it, and schedules coherently.
func TestManifestCommands(t *testing.T) {
	testtier.Slow(t, "the refresher binary (go build)")
	files, _ := readDeploy(t)
	vs := currentVars()
	m := parseManifests(files)
	report(t, m.problems)
	for _, w := range m.workloads {
		report(t, checkCommand(refresher, w))
		report(t, checkLifecycle(w))
		report(t, checkSchedule(w, vs))
	}
}

func TestKubernetesManifests(t *testing.T) {
	files, goMod := readDeploy(t)
	uid, _ := checkDockerfile(string(files["Dockerfile"]), goMod)
	report(t, checkKubernetes(parseManifests(files), currentVars(), uid, natsClusterSize))
}

func TestComposeFile(t *testing.T) {
	files, _ := readDeploy(t)
	report(t, checkCompose(parseManifests(files), currentVars()))
}

func TestDockerfile(t *testing.T) {
	files, goMod := readDeploy(t)
	uid, problems := checkDockerfile(string(files["Dockerfile"]), goMod)
	report(t, problems)
	if uid == 0 {
		t.Error("no non-root uid found in the final stage")
	}
}

func TestNATSClusterConfig(t *testing.T) {
	report(t, checkNATS("nats"))

	t.Run("nats-server -t", func(t *testing.T) {
		bin, version := natsServerVersion()
		switch {
		case bin == "":
			t.Skip("no nats-server on PATH; the configuration was parsed in-process above")
		case !atLeast210(version):
			t.Skipf("%s is %q, older than 2.10, which introduced sync_interval; parsed in-process above", bin, version)
		}
		nodes, err := filepath.Glob(filepath.Join("nats", "node-*.conf"))
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			if err := testConfigWithBinary(bin, n); err != nil {
				t.Error(err)
			}
		}
	})
}
