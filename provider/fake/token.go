package fake

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
)

// Token kinds are part of the token text so that an access token sent as a
// refresh token is caught as malformed instead of being adopted.
const (
	kindRefresh = "rt"
	kindAccess  = "at"
)

const (
	// randomBytes is the entropy per token; 16 bytes make collisions between
	// independently seeded tokens a non-issue.
	randomBytes = 16
	// minRandomChars is what 16 bytes take in unpadded base64url; hex is longer,
	// so both encodings named in the format pass.
	minRandomChars = 22
	// maxGenDigits keeps generation parsing far from integer overflow.
	maxGenDigits  = 9
	maxLineageLen = 200
)

// parsedToken is a token split into its fields. The random part is kept out of it
// on purpose: nothing that reports on a token needs it.
type parsedToken struct {
	kind    string
	lineage string
	gen     int
}

// ValidLineage reports whether s can name a credential in a token. A seed command
// should check user input with it before calling SeedTokens, which panics.
func ValidLineage(s string) bool {
	if s == "" || len(s) > maxLineageLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// SeedTokens returns a generation-0 token pair for lineage. It needs no Provider
// because tokens carry their lineage and generation: a Provider started later
// adopts them on first use. It panics if lineage is not ValidLineage, since a
// token that cannot be parsed back would break every test built on it.
func SeedTokens(lineage string) (access, refresh string) {
	if !ValidLineage(lineage) {
		panic(fmt.Sprintf("fake: invalid lineage %q: want [a-z0-9_-]+", lineage))
	}
	return makeToken(kindAccess, lineage, 0), makeToken(kindRefresh, lineage, 0)
}

// Lineage returns the credential a token belongs to. It accepts access and refresh
// tokens, so tests can attribute either kind without knowing which they hold.
func Lineage(token string) (string, bool) {
	pt, ok := parseToken(token)
	if !ok {
		return "", false
	}
	return pt.lineage, true
}

// Generation returns how many rotations separate a token from its lineage's seed.
// It lets tests and error messages talk about tokens without quoting them.
func Generation(token string) (int, bool) {
	pt, ok := parseToken(token)
	if !ok {
		return 0, false
	}
	return pt.gen, true
}

func makeToken(kind, lineage string, gen int) string {
	b := make([]byte, randomBytes)
	// crypto/rand.Read never fails on supported platforms since Go 1.24.
	_, _ = rand.Read(b)
	return kind + "." + lineage + "." + strconv.Itoa(gen) + "." + base64.RawURLEncoding.EncodeToString(b)
}

func parseToken(token string) (parsedToken, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 4 {
		return parsedToken{}, false
	}
	kind, lineage, genText, random := parts[0], parts[1], parts[2], parts[3]
	if kind != kindRefresh && kind != kindAccess {
		return parsedToken{}, false
	}
	if !ValidLineage(lineage) {
		return parsedToken{}, false
	}
	if genText == "" || len(genText) > maxGenDigits {
		return parsedToken{}, false
	}
	for i := 0; i < len(genText); i++ {
		if genText[i] < '0' || genText[i] > '9' {
			return parsedToken{}, false
		}
	}
	gen, err := strconv.Atoi(genText)
	if err != nil {
		return parsedToken{}, false
	}
	if len(random) < minRandomChars {
		return parsedToken{}, false
	}
	for i := 0; i < len(random); i++ {
		c := random[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return parsedToken{}, false
		}
	}
	return parsedToken{kind: kind, lineage: lineage, gen: gen}, true
}

// parseRefresh is parseToken restricted to refresh tokens, the only kind the
// token endpoint and Verify accept.
func parseRefresh(token string) (parsedToken, bool) {
	pt, ok := parseToken(token)
	if !ok || pt.kind != kindRefresh {
		return parsedToken{}, false
	}
	return pt, true
}
