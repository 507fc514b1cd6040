package deploy_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	line int
	cmd  string // upper-cased: FROM, RUN, COPY, USER, ENTRYPOINT, ...
	args string
}

// stage is one FROM and what follows it.
type stage struct {
	from  string // the image
	name  string // AS name
	instr []instruction
}

func parseDockerfile(src string) []stage {
	var stages []stage
	lines := strings.Split(src, "\n")
	for i := 0; i < len(lines); i++ {
		start := i
		text := strings.TrimSpace(lines[i])
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		for strings.HasSuffix(text, `\`) && i+1 < len(lines) {
			i++
			next := strings.TrimSpace(lines[i])
			if strings.HasPrefix(next, "#") {
				continue
			}
			text = strings.TrimSuffix(text, `\`) + " " + next
		}
		cmd, args, _ := strings.Cut(text, " ")
		in := instruction{line: start + 1, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			st := stage{}
			for j := 0; j < len(f); j++ {
				switch {
				case strings.HasPrefix(f[j], "--"):
				case strings.EqualFold(f[j], "AS") && j+1 < len(f):
					st.name = f[j+1]
					j++
				case st.from == "":
					st.from = f[j]
				}
			}
			stages = append(stages, st)
			continue
		}
		if len(stages) > 0 {
			stages[len(stages)-1].instr = append(stages[len(stages)-1].instr, in)
		}
	}
	return stages
}

// goModVersion is the major.minor of go.mod's go line.
var goLine = regexp.MustCompile(`(?m)^go (\d+)\.(\d+)`)

// checkDockerfile checks what can be checked of deploy/Dockerfile without a container
// engine, and returns the numeric uid of its final stage's USER (0 if unknown).
func checkDockerfile(src, goMod string) (uid int, problems []string) {
	bad := func(format string, args ...any) {
		problems = append(problems, "Dockerfile: "+fmt.Sprintf(format, args...))
	}
	stages := parseDockerfile(src)
	if len(stages) < 2 {
		bad("want a multi-stage build (a Go builder and a small final image), found %d stage(s)", len(stages))
		return 0, problems
	}
	build, final := stages[0], stages[len(stages)-1]

	// The builder's Go must be able to build go.mod's version.
	m := goLine.FindStringSubmatch(goMod)
	img := regexp.MustCompile(`^golang:(\d+)\.(\d+)`).FindStringSubmatch(build.from)
	switch {
	case m == nil:
		bad("go.mod has no go line")
	case img == nil:
		bad("build stage FROM %s: want golang:<major>.<minor>", build.from)
	default:
		want := atoi(m[1])*1000 + atoi(m[2])
		if got := atoi(img[1])*1000 + atoi(img[2]); got < want {
			bad("build stage FROM %s is older than go.mod's go %s.%s", build.from, m[1], m[2])
		}
	}

	// The build: static, trimmed, of ./cmd/refresher, into the path the final stage copies.
	var out string
	var cacheMount bool
	for _, in := range build.instr {
		if in.cmd != "RUN" {
			continue
		}
		cacheMount = cacheMount || strings.Contains(in.args, "--mount=type=cache,target=/go/pkg/mod")
		if !strings.Contains(in.args, "go build") {
			continue
		}
		for _, want := range []string{"CGO_ENABLED=0", "-trimpath", `-ldflags="-s -w"`} {
			if !strings.Contains(in.args, want) {
				bad("line %d: go build without %s", in.line, want)
			}
		}
		f := strings.Fields(in.args)
		pkg := f[len(f)-1]
		if pkg != "./cmd/refresher" {
			bad("line %d: builds %s, want ./cmd/refresher", in.line, pkg)
		} else if _, err := os.Stat(filepath.Join("..", "cmd", "refresher", "main.go")); err != nil {
			bad("line %d: ./cmd/refresher: %v", in.line, err)
		}
		for i, a := range f {
			if a == "-o" && i+1 < len(f) {
				out = f[i+1]
			}
		}
	}
	if out == "" {
		bad("build stage: no `go build -o <path> ./cmd/refresher`")
	}
	if !cacheMount {
		bad("build stage: no module cache mount (RUN --mount=type=cache,target=/go/pkg/mod)")
	}

	// The final stage: small, non-root, the binary as entrypoint.
	if !strings.HasPrefix(final.from, "gcr.io/distroless/static") && final.from != "scratch" {
		bad("final stage FROM %s: want gcr.io/distroless/static (or scratch with CA certificates)", final.from)
	}
	var dest, user, entry string
	for _, in := range final.instr {
		switch in.cmd {
		case "COPY":
			if strings.Contains(in.args, "--from="+build.name) && strings.Contains(in.args, out) {
				f := strings.Fields(in.args)
				dest = f[len(f)-1]
			}
		case "USER":
			user = in.args
		case "ENTRYPOINT":
			entry = in.args
		}
	}
	if final.from == "scratch" && !strings.Contains(src, "ca-certificates") {
		bad("final stage FROM scratch: copy the CA certificates (token endpoints use TLS)")
	}
	if dest == "" {
		bad("final stage: no COPY --from=%s of %s", build.name, out)
	}
	name, _, _ := strings.Cut(user, ":")
	n, err := strconv.Atoi(name)
	switch {
	case user == "":
		bad("final stage: no USER: the process would run as root")
	case err != nil:
		bad("final stage: USER %s: use a numeric uid, which Kubernetes' runAsNonRoot can verify", user)
	case n == 0:
		bad("final stage: USER %s is root", user)
	default:
		uid = n
	}
	var ep []string
	if err := json.Unmarshal([]byte(entry), &ep); err != nil || len(ep) == 0 {
		bad("final stage: ENTRYPOINT %q: want the exec form [\"/path/to/refresher\"]", entry)
	} else if dest != "" && ep[0] != dest {
		bad("final stage: ENTRYPOINT %s is not the copied binary %s", ep[0], dest)
	}
	return uid, problems
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
