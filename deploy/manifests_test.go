// Package deploy_test keeps the deployment files under deploy/ from drifting away from
// the binary: every environment variable they set must be one refresher reads, every
// variable a workload needs must be set, and every command and flag must exist.
package deploy_test

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// deployFiles reads every file under dir (deploy/) into memory, keyed by its
// slash-separated path relative to dir, so that the checks can also run on altered
// copies (drift_test.go).
func deployFiles(dir string) (map[string][]byte, error) {
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files[filepath.ToSlash(rel)] = b
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", dir, err)
	}
	return files, nil
}

// isManifest reports whether the drift checks parse the file: every YAML and JSON
// file under deploy/.
func isManifest(name string) bool {
	switch path.Ext(name) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// sortedNames returns the keys of files in a stable order, for stable messages.
func sortedNames[V any](m map[string]V) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// document is one YAML document (JSON files are one document each).
type document struct {
	file  string
	index int
	v     map[string]any
}

func (d document) String() string {
	if d.index == 0 {
		return d.file
	}
	return fmt.Sprintf("%s (document %d)", d.file, d.index+1)
}

// isKubernetes tells a Kubernetes object from a compose file.
func (d document) isKubernetes() bool {
	_, ok := d.v["kind"]
	return ok
}

// parseDocuments decodes every document of a YAML (or JSON) file.
func parseDocuments(name string, data []byte) ([]document, error) {
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	var docs []document
	for i := 0; ; i++ {
		var v any
		err := dec.Decode(&v)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", name, i+1, err)
		}
		if v == nil {
			continue // an empty document, like a trailing ---
		}
		m, ok := v.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%s: document %d: a %T, want a mapping", name, i+1, v)
		}
		docs = append(docs, document{file: name, index: i, v: m})
	}
}

// workload is one refresher process as a manifest runs it: a compose service or a
// Kubernetes container whose image is refresher's.
type workload struct {
	where string // for messages: the file and the service or object and container
	name  string // the compose service or the Kubernetes object
	// group is the set of workloads deployed together, which must agree on the stream
	// settings: the compose file, or "k8s".
	group string
	// kind is "compose" or the Kubernetes kind (Deployment, Job, CronJob, ...).
	kind string
	args []string
	env  map[string]string
	// opaque holds variables set from a source whose value the test cannot know
	// (fieldRef, resourceFieldRef): set, but not value-checked.
	opaque map[string]bool

	service   map[string]any // compose: the service
	object    map[string]any // Kubernetes: the object
	pod       map[string]any // Kubernetes: the pod template's spec
	podMeta   map[string]any // Kubernetes: the pod template's metadata
	container map[string]any // Kubernetes: the container
}

// command is the subcommand the workload runs ("" when none).
func (w workload) command() string {
	if len(w.args) == 0 || strings.HasPrefix(w.args[0], "-") {
		return ""
	}
	return w.args[0]
}

// flagValue returns the value given to --name in args.
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if a == "--"+name && i+1 < len(args) {
			return args[i+1], true
		}
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// hasFlag reports whether --name is given.
func hasFlag(args []string, name string) bool {
	_, ok := flagValue(args, name)
	return ok
}

// manifests is what deploy/ describes.
type manifests struct {
	files      map[string][]byte
	docs       []document
	workloads  []workload
	configMaps map[string]map[string]string // Kubernetes ConfigMaps: name, key, value
	secrets    map[string]map[string]string // Kubernetes Secrets
	problems   []string                     // what could not be parsed or resolved
}

func (m *manifests) problem(format string, args ...any) {
	m.problems = append(m.problems, fmt.Sprintf(format, args...))
}

// parseManifests parses every manifest in files and extracts the refresher workloads.
func parseManifests(files map[string][]byte) *manifests {
	m := &manifests{files: files, configMaps: map[string]map[string]string{}, secrets: map[string]map[string]string{}}
	for _, name := range sortedNames(files) {
		if !isManifest(name) {
			continue
		}
		docs, err := parseDocuments(name, files[name])
		if err != nil {
			m.problem("%v", err)
			continue
		}
		if len(docs) == 0 {
			m.problem("%s: no document", name)
		}
		m.docs = append(m.docs, docs...)
	}
	// ConfigMaps and Secrets first: containers anywhere may reference them.
	for _, d := range m.docs {
		if d.isKubernetes() {
			m.collectData(d)
		}
	}
	for _, d := range m.docs {
		switch {
		case d.isKubernetes():
			m.kubernetesWorkloads(d)
		case d.v["services"] != nil:
			m.composeWorkloads(d)
		default:
			m.problem("%s: neither a Kubernetes object (kind) nor a compose file (services)", d)
		}
	}
	return m
}

// byCommand returns the workloads running cmd, in group ("" for any).
func (m *manifests) byCommand(group, cmd string) []workload {
	var out []workload
	for _, w := range m.workloads {
		if w.command() == cmd && (group == "" || w.group == group) {
			out = append(out, w)
		}
	}
	return out
}

// isRefresherImage recognises refresher's image whatever its registry and tag:
// registry.example.com/refresher:0.1.0, refresher:local, refresher.
func isRefresherImage(image string) bool {
	if i := strings.LastIndex(image, "@"); i >= 0 {
		image = image[:i]
	}
	base := path.Base(image)
	if i := strings.Index(base, ":"); i >= 0 {
		base = base[:i]
	}
	return base == "refresher"
}

// Accessors for decoded YAML.

func get(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func getMap(v any, keys ...string) map[string]any {
	m, _ := get(v, keys...).(map[string]any)
	return m
}

func getList(v any, keys ...string) []any {
	l, _ := get(v, keys...).([]any)
	return l
}

func getString(v any, keys ...string) string {
	s, _ := get(v, keys...).(string)
	return s
}

// scalar renders a YAML scalar the way compose turns it into an environment value.
func scalar(v any) string {
	if v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

// Compose.

func (m *manifests) composeWorkloads(d document) {
	services := getMap(d.v, "services")
	if services == nil {
		m.problem("%s: services is not a mapping", d)
		return
	}
	for _, name := range sortedNames(services) {
		svc, ok := services[name].(map[string]any)
		if !ok {
			m.problem("%s: service %s is not a mapping", d, name)
			continue
		}
		if !isRefresherImage(getString(svc, "image")) {
			continue // nats, postgres: not ours to check
		}
		w := workload{
			where: fmt.Sprintf("%s: service %s", d, name), name: name, group: d.file, kind: "compose",
			env: map[string]string{}, opaque: map[string]bool{}, service: svc,
		}
		if svc["entrypoint"] != nil {
			m.problem("%s: entrypoint is overridden; the checks assume the image's (the refresher binary)", w.where)
		}
		if svc["env_file"] != nil {
			m.problem("%s: env_file is not checked by deploy_test.go; set the variables under environment", w.where)
		}
		switch c := svc["command"].(type) {
		case string:
			w.args = strings.Fields(c)
		case []any:
			for _, a := range c {
				w.args = append(w.args, scalar(a))
			}
		case nil:
		default:
			m.problem("%s: command is a %T", w.where, c)
		}
		switch env := svc["environment"].(type) {
		case map[string]any:
			for k, v := range env {
				w.env[k] = scalar(v)
			}
		case []any:
			for _, e := range env {
				k, v, _ := strings.Cut(scalar(e), "=")
				w.env[k] = v
			}
		case nil:
		default:
			m.problem("%s: environment is a %T", w.where, env)
		}
		m.workloads = append(m.workloads, w)
	}
}

// Kubernetes.

// collectData records the keys and values of ConfigMaps and Secrets.
func (m *manifests) collectData(d document) {
	kind, name := getString(d.v, "kind"), getString(d.v, "metadata", "name")
	var into map[string]map[string]string
	switch kind {
	case "ConfigMap":
		into = m.configMaps
	case "Secret":
		into = m.secrets
	default:
		return
	}
	if _, dup := into[name]; dup {
		m.problem("%s: %s %q is defined twice", d, kind, name)
	}
	data := map[string]string{}
	for k, v := range getMap(d.v, "data") {
		s, ok := v.(string)
		if !ok {
			// The API server refuses it: data values are strings ("3", not 3).
			m.problem("%s: %s %s: data.%s is a %T, not a string: quote it", d, kind, name, k, v)
			s = scalar(v)
		}
		if kind == "Secret" {
			b, err := base64.StdEncoding.DecodeString(s)
			if err != nil {
				m.problem("%s: Secret %s: data.%s is not base64: %v", d, name, k, err)
			}
			s = string(b)
		}
		data[k] = s
	}
	for k, v := range getMap(d.v, "stringData") {
		s, ok := v.(string)
		if !ok {
			m.problem("%s: Secret %s: stringData.%s is a %T, not a string: quote it", d, name, k, v)
			s = scalar(v)
		}
		data[k] = s
	}
	into[name] = data
}

// podTemplate finds the pod template of a workload kind.
func podTemplate(obj map[string]any) (meta, spec map[string]any, ok bool) {
	switch getString(obj, "kind") {
	case "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job":
		return getMap(obj, "spec", "template", "metadata"), getMap(obj, "spec", "template", "spec"), true
	case "CronJob":
		t := getMap(obj, "spec", "jobTemplate", "spec", "template")
		return getMap(t, "metadata"), getMap(t, "spec"), true
	case "Pod":
		return getMap(obj, "metadata"), getMap(obj, "spec"), true
	}
	return nil, nil, false
}

func (m *manifests) kubernetesWorkloads(d document) {
	kind, name := getString(d.v, "kind"), getString(d.v, "metadata", "name")
	if getString(d.v, "apiVersion") == "" || name == "" {
		m.problem("%s: a Kubernetes object needs apiVersion and metadata.name", d)
	}
	meta, spec, ok := podTemplate(d.v)
	if !ok {
		return
	}
	if spec == nil {
		m.problem("%s: %s %s has no pod template", d, kind, name)
		return
	}
	var containers []any
	containers = append(containers, getList(spec, "initContainers")...)
	containers = append(containers, getList(spec, "containers")...)
	for _, c := range containers {
		c, _ := c.(map[string]any)
		if !isRefresherImage(getString(c, "image")) {
			continue
		}
		w := workload{
			where: fmt.Sprintf("%s: %s %s, container %s", d, kind, name, getString(c, "name")),
			name:  name, group: "k8s", kind: kind, env: map[string]string{}, opaque: map[string]bool{},
			object: d.v, pod: spec, podMeta: meta, container: c,
		}
		// With `command` the entrypoint is replaced; its first word must still be the
		// binary for the arguments to mean what the checks think.
		if cmd := getList(c, "command"); len(cmd) > 0 {
			if path.Base(scalar(cmd[0])) != "refresher" {
				m.problem("%s: command %v does not run the refresher binary", w.where, cmd)
			}
			for _, a := range cmd[1:] {
				w.args = append(w.args, scalar(a))
			}
		}
		for _, a := range getList(c, "args") {
			w.args = append(w.args, scalar(a))
		}
		m.containerEnv(&w, c)
		m.workloads = append(m.workloads, w)
	}
}

// containerEnv resolves envFrom (in order) and then env, as the kubelet does.
func (m *manifests) containerEnv(w *workload, c map[string]any) {
	for _, e := range getList(c, "envFrom") {
		prefix := getString(e, "prefix")
		var src map[string]string
		var kind, name string
		switch {
		case getMap(e, "configMapRef") != nil:
			kind, name = "ConfigMap", getString(e, "configMapRef", "name")
			src = m.configMaps[name]
		case getMap(e, "secretRef") != nil:
			kind, name = "Secret", getString(e, "secretRef", "name")
			src = m.secrets[name]
		default:
			m.problem("%s: envFrom entry %v: want configMapRef or secretRef", w.where, e)
			continue
		}
		if src == nil {
			m.problem("%s: envFrom references %s %q, which no file under deploy/k8s defines", w.where, kind, name)
			continue
		}
		for k, v := range src {
			w.env[prefix+k] = v
			delete(w.opaque, prefix+k)
		}
	}
	for _, e := range getList(c, "env") {
		name := getString(e, "name")
		if name == "" {
			m.problem("%s: env entry without a name: %v", w.where, e)
			continue
		}
		if v, ok := get(e, "value").(string); ok {
			w.env[name] = v
			delete(w.opaque, name)
			continue
		} else if get(e, "value") != nil {
			m.problem("%s: env %s: value is a %T, not a string: quote it", w.where, name, get(e, "value"))
			w.env[name] = scalar(get(e, "value"))
			continue
		}
		from := getMap(e, "valueFrom")
		var kind string
		var src map[string]map[string]string
		var ref map[string]any
		switch {
		case getMap(from, "configMapKeyRef") != nil:
			kind, src, ref = "ConfigMap", m.configMaps, getMap(from, "configMapKeyRef")
		case getMap(from, "secretKeyRef") != nil:
			kind, src, ref = "Secret", m.secrets, getMap(from, "secretKeyRef")
		case from != nil:
			w.env[name] = ""
			w.opaque[name] = true // fieldRef, resourceFieldRef: known only at run time
			continue
		default:
			w.env[name] = "" // `- name: X` alone sets X to ""
			delete(w.opaque, name)
			continue
		}
		refName, key := getString(ref, "name"), getString(ref, "key")
		data, ok := src[refName]
		if !ok {
			m.problem("%s: env %s references %s %q, which no file under deploy/k8s defines", w.where, name, kind, refName)
			continue
		}
		v, ok := data[key]
		if !ok {
			m.problem("%s: env %s references key %q, which %s %s does not have", w.where, name, key, kind, refName)
			continue
		}
		w.env[name] = v
		delete(w.opaque, name)
	}
}
