// Package progress shows a command's running status on one self-overwriting line of a
// terminal, and nothing at all anywhere else: progress is for a person watching, and
// must never end up in a pipe, a file or a log collector.
package progress

import (
	"fmt"
	"io"
	"os"
	"reflect"
	"sync"
	"time"

	"golang.org/x/term"
)

// DefaultInterval is how often a Line redraws at most: often enough to look alive,
// rarely enough that a hot loop calling Printf costs nothing measurable.
const DefaultInterval = 100 * time.Millisecond

// Line is one status line. Its methods are safe for concurrent use (publish acks
// arrive on many goroutines), and a nil or disabled Line does nothing.
type Line struct {
	mu       sync.Mutex
	w        io.Writer
	on       bool
	interval time.Duration
	now      func() time.Time
	last     time.Time
	drawn    bool
	text     string // what is drawn, to draw again after a log line
}

// New returns a Line on w that draws only when w is a terminal.
func New(w io.Writer) *Line { return NewFor(w, IsTerminal(w)) }

// NewFor returns a Line on w that draws when on is true, whatever w is: for callers
// that decided already (a --progress flag) and for tests.
func NewFor(w io.Writer, on bool) *Line {
	l := &Line{w: w, on: on, interval: DefaultInterval, now: time.Now}
	if on {
		register(l)
	}
	return l
}

// IsTerminal reports whether w is a file descriptor attached to a terminal.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// Enabled reports whether the line draws anything.
func (l *Line) Enabled() bool { return l != nil && l.on }

// Printf replaces the line's text, at most once per DefaultInterval; updates in
// between are dropped, since only the newest state is worth showing.
func (l *Line) Printf(format string, args ...any) {
	if !l.Enabled() {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if l.drawn && now.Sub(l.last) < l.interval {
		return
	}
	l.last = now
	l.drawn = true
	l.text = fmt.Sprintf(format, args...)
	// \r back to column 0, then erase to the end of the line: a shorter text must not
	// leave the tail of a longer one behind.
	fmt.Fprint(l.w, "\r"+l.text+"\x1b[K")
}

// Clear erases the line, so that what the command prints next starts on a clean
// line. Call it before printing results; the Line can be drawn again afterwards.
func (l *Line) Clear() {
	if !l.Enabled() {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.drawn {
		fmt.Fprint(l.w, "\r\x1b[K")
		l.drawn = false
	}
}

// lines are the Lines drawing now, by the writer they draw on, for Under.
var (
	linesMu sync.Mutex
	lines   []*Line
)

func register(l *Line) {
	linesMu.Lock()
	defer linesMu.Unlock()
	// One Line per writer at a time: a command's new Line replaces an earlier one.
	out := lines[:0]
	for _, o := range lines {
		if !sameWriter(o.w, l.w) {
			out = append(out, o)
		}
	}
	lines = append(out, l)
}

func sameWriter(a, b io.Writer) bool {
	ta, tb := reflect.TypeOf(a), reflect.TypeOf(b)
	return ta == tb && ta != nil && ta.Comparable() && a == b
}

func lineOn(w io.Writer) *Line {
	linesMu.Lock()
	defer linesMu.Unlock()
	for _, l := range lines {
		if sameWriter(l.w, w) {
			return l
		}
	}
	return nil
}

// Under returns a writer for log lines on w (the logger's writer): each write first
// erases a progress line drawn on w, and draws it again below, so that a log line
// never starts in the middle of the progress text.
func Under(w io.Writer) io.Writer { return underWriter{w} }

type underWriter struct{ w io.Writer }

func (u underWriter) Write(p []byte) (int, error) {
	l := lineOn(u.w)
	if l == nil {
		return u.w.Write(p)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.drawn {
		return u.w.Write(p)
	}
	fmt.Fprint(l.w, "\r\x1b[K")
	n, err := u.w.Write(p)
	if len(p) > 0 && p[len(p)-1] == '\n' {
		fmt.Fprint(l.w, "\r"+l.text+"\x1b[K")
	} else {
		l.drawn = false
	}
	return n, err
}
