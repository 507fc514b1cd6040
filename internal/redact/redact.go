// Package redact is the program's one rule for hiding secrets in the URLs and
// connection strings it prints.
package redact

import "strings"

// Mask is what every secret the program prints is replaced with.
const Mask = "****"

// URL returns a URL, a comma-separated list of URLs or a keyword/value
// connection string (host=… password=…) with every secret replaced by Mask, so it
// can be logged or printed. It is the one redaction rule of the program:
//
//   - user info: a password is masked and the user name kept (user:****@host);
//     user info without a password is masked whole (a NATS token, nats://****@host),
//     except in postgres:// URLs, where it is the role name;
//   - query and fragment parameters whose name says password, token, secret or key
//     (password=, access_token=, client_secret=, api_key=, …) have their value masked;
//   - in the keyword form, the values of the same keys are masked;
//   - a string that is none of these has everything up to its last '@' masked.
//
// The result is meant for people; it need not parse.
func URL(raw string) string {
	if raw == "" {
		return `""`
	}
	if isKeywordDSN(raw) {
		return redactKeywords(raw)
	}
	return redactURLs(raw)
}

// SecretParam reports whether a query, fragment or keyword parameter called name
// holds a secret: password, passwd, pwd, pass, *token*, *secret*, key, *_key, *-key,
// apikey, signature, sig, credential(s).
func SecretParam(name string) bool {
	n := strings.ToLower(strings.TrimSpace(name))
	switch n {
	case "pass", "pwd", "key", "apikey", "sig", "signature", "auth", "authorization", "credential", "credentials", "code":
		return true
	}
	for _, s := range []string{"password", "passwd", "passphrase", "token", "secret"} {
		if strings.Contains(n, s) {
			return true
		}
	}
	return strings.HasSuffix(n, "_key") || strings.HasSuffix(n, "-key") || strings.HasSuffix(n, "apikey")
}

// isKeywordDSN reports whether raw is libpq's keyword/value form: no "://", and it
// starts with a word followed by '='.
func isKeywordDSN(raw string) bool {
	if strings.Contains(raw, "://") {
		return false
	}
	s := strings.TrimLeft(raw, " \t\n\r")
	i := 0
	for i < len(s) && (isWordByte(s[i])) {
		i++
	}
	if i == 0 {
		return false
	}
	s = strings.TrimLeft(s[i:], " \t\n\r")
	return strings.HasPrefix(s, "=")
}

func isWordByte(c byte) bool {
	return c == '_' || c == '-' || c == '.' || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9')
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

// redactKeywords masks secret values in libpq's keyword/value form, following its
// quoting: a value is a run of non-blanks, or single-quoted with backslash escapes.
// Anything it cannot follow is masked to the end.
func redactKeywords(raw string) string {
	var b strings.Builder
	i := 0
	for i < len(raw) {
		// blanks
		for i < len(raw) && isSpace(raw[i]) {
			b.WriteByte(raw[i])
			i++
		}
		if i >= len(raw) {
			break
		}
		start := i
		for i < len(raw) && isWordByte(raw[i]) {
			i++
		}
		key := raw[start:i]
		for i < len(raw) && isSpace(raw[i]) {
			i++
		}
		if key == "" || i >= len(raw) || raw[i] != '=' {
			// Not keyword=value: what follows cannot be told apart from a value.
			b.WriteString(raw[start:min(i, len(raw))])
			if i < len(raw) {
				b.WriteString(Mask)
			}
			return b.String()
		}
		b.WriteString(raw[start:i]) // key and blanks before '='
		b.WriteByte('=')
		i++
		for i < len(raw) && isSpace(raw[i]) {
			b.WriteByte(raw[i])
			i++
		}
		vstart := i
		if i < len(raw) && raw[i] == '\'' {
			i++
			closed := false
			for i < len(raw) {
				if raw[i] == '\\' && i+1 < len(raw) {
					i += 2
					continue
				}
				if raw[i] == '\'' {
					i++
					closed = true
					break
				}
				i++
			}
			if !closed {
				if SecretParam(key) {
					b.WriteString(Mask)
				} else {
					b.WriteString(raw[vstart:])
				}
				return b.String()
			}
		} else {
			for i < len(raw) && !isSpace(raw[i]) {
				if raw[i] == '\\' && i+1 < len(raw) {
					i++
				}
				i++
			}
		}
		if SecretParam(key) {
			b.WriteString(Mask)
		} else {
			b.WriteString(raw[vstart:i])
		}
	}
	return b.String()
}

// redactURLs masks the user info and secret parameters of each comma-separated URL
// in raw. A part with no "://" continues the previous part's query when one was open
// (a comma in a parameter value), else it is a URL without a scheme (host:port).
func redactURLs(raw string) string {
	parts := SplitURLs(raw)
	inQuery, inSecret := false, false
	for i, p := range parts {
		if inQuery && !strings.Contains(p, "://") {
			parts[i], inSecret = redactParams(p, inSecret)
			continue
		}
		parts[i], inQuery, inSecret = redactURL(p, strings.HasPrefix(strings.ToLower(strings.TrimSpace(p)), "postgres"))
	}
	return strings.Join(parts, ",")
}

// redactURL masks one URL's user info and secret parameters. It reports whether the
// URL ends inside its query or fragment, and inside a secret value there.
func redactURL(p string, keepUser bool) (out string, inQuery, inSecret bool) {
	authStart := 0
	if k := strings.Index(p, "://"); k >= 0 {
		authStart = k + 3
	}
	authEnd := len(p)
	if k := strings.IndexAny(p[authStart:], "/?#"); k >= 0 {
		authEnd = authStart + k
	}
	// The user info ends at the last '@' of the authority, or:
	if at := strings.LastIndex(p[authEnd:], "@"); at >= 0 && !strings.Contains(p[authStart:authEnd], "@") && !queryBefore(p[authEnd:authEnd+at]) {
		// An '@' after a '/', '?' or '#' that does not begin a query: a password with
		// one of those characters not percent-encoded. The user info ends there.
		authEnd += at + 1
		if k := strings.IndexAny(p[authEnd:], "/?#"); k >= 0 {
			authEnd += k
		} else {
			authEnd = len(p)
		}
	}
	auth := p[authStart:authEnd]
	if at := strings.LastIndex(auth, "@"); at >= 0 {
		user := auth[:at]
		if c := strings.Index(user, ":"); c >= 0 && !strings.ContainsAny(user[:c], "/?#") {
			user = user[:c] + ":" + Mask
		} else if !keepUser || user == "" || strings.ContainsAny(user, "/?#") {
			user = Mask
		}
		auth = user + auth[at:]
	}
	if authEnd == len(p) {
		// No path, query or fragment; an '@' anywhere (a scheme-less or mangled URL)
		// was in auth and handled above.
		return p[:authStart] + auth, false, false
	}
	rest := p[authEnd:]
	q := strings.IndexAny(rest, "?#")
	if q < 0 {
		return p[:authStart] + auth + rest, false, false
	}
	params, secret := redactParams(rest[q+1:], false)
	return p[:authStart] + auth + rest[:q+1] + params, true, secret
}

// redactParams masks the values of secret parameters in a query or fragment
// (name=value pairs separated by '&', ';' or '#'). inSecret says the text starts in
// the middle of a secret value; the result says whether it ends in one.
func redactParams(s string, inSecret bool) (string, bool) {
	var b strings.Builder
	i := 0
	if inSecret {
		j := strings.IndexAny(s, "&;#")
		if j < 0 {
			return Mask, true
		}
		b.WriteString(Mask)
		i = j
	}
	for i < len(s) {
		if c := s[i]; c == '&' || c == ';' || c == '#' || c == '?' {
			b.WriteByte(c)
			i++
			continue
		}
		end := strings.IndexAny(s[i:], "&;#")
		if end < 0 {
			end = len(s)
		} else {
			end += i
		}
		pair := s[i:end]
		name, _, hasValue := strings.Cut(pair, "=")
		if hasValue && SecretParam(unescape(name)) {
			b.WriteString(name + "=" + Mask)
			inSecret = end == len(s)
		} else {
			b.WriteString(pair)
			inSecret = false
		}
		i = end
	}
	return b.String(), inSecret
}

// unescape decodes %XX in a parameter name, leaving it as it is when it does not
// decode, so that pass%77ord is recognised.
func unescape(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F')
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// queryBefore reports whether s, the text between the end of a URL's authority and an
// '@', holds a query or fragment parameter (a '?' or '#' followed by an '='): then the
// '@' is in a parameter's value (an e-mail address), not the end of the user info.
func queryBefore(s string) bool {
	q := strings.IndexAny(s, "?#")
	return q >= 0 && strings.Contains(s[q:], "=")
}

// SplitURLs splits a comma-separated list of URLs, keeping a comma that is in a
// password (nats://u:pa,ss@host) inside its URL: the part after such a comma has an
// '@' but no scheme, and the part before it a scheme and no '@', path, query or
// fragment yet. Validators use it so that their messages never quote half a password
// as a host or port.
func SplitURLs(raw string) []string {
	var parts []string
	for _, p := range strings.Split(raw, ",") {
		if n := len(parts); n > 0 && !strings.Contains(p, "://") && strings.Contains(p, "@") {
			prev := parts[n-1]
			if k := strings.Index(prev, "://"); k >= 0 && !strings.ContainsAny(prev[k+3:], "@/?#") {
				parts[n-1] = prev + "," + p
				continue
			}
		}
		parts = append(parts, p)
	}
	return parts
}
