package main

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// version describes this binary from its build information: the module version (a
// tag when built with go install module@version, "(devel)" from a work tree), the VCS
// revision and time it was built from (and "modified" when the tree had changes),
// and the Go release.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown (no build information)"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, at string
	modified := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	parts := []string{v}
	switch {
	case rev != "":
		r := "revision " + rev
		if modified {
			r += " (modified)"
		}
		if at != "" {
			r += " of " + at
		}
		parts = append(parts, r)
	default:
		parts = append(parts, "revision unknown (built without VCS information)")
	}
	parts = append(parts, bi.GoVersion)
	return strings.Join(parts, ", ")
}

// versionTemplate is what --version prints.
var versionTemplate = fmt.Sprintf("%s\n", `{{.Name}} {{.Version}}`)
