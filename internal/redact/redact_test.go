package redact

import (
	"net/url"
	"strings"
	"testing"
)

func TestURL(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		secrets  []string
	}{
		{"", `""`, nil},
		{"postgres://u:P4ss@h:5432/db?sslmode=disable", "postgres://u:****@h:5432/db?sslmode=disable", []string{"P4ss"}},
		{"postgres://u@h/db?password=P4ss&sslmode=require", "postgres://u@h/db?password=****&sslmode=require", []string{"P4ss"}},
		{"postgresql://u@h/db?sslpassword=K3y&sslkey=/etc/k.pem", "postgresql://u@h/db?sslpassword=****&sslkey=/etc/k.pem", []string{"K3y"}},
		{"postgres://u:p%40ss@h/db", "postgres://u:****@h/db", []string{"p%40ss"}},
		{"postgres://u:pa/ss@h/db", "postgres://u:****@h/db", []string{"pa/ss", "ss@"}},
		{"postgres://u:pa?ss@h/db", "postgres://u:****@h/db", []string{"pa?ss"}},
		{"postgres://u:P4ss@h1:5432,h2:5433/db?password=Q", "postgres://u:****@h1:5432,h2:5433/db?password=****", []string{"P4ss", "=Q"}},
		{"postgres://u@h/db?password=a,b&x=1", "postgres://u@h/db?password=****,****&x=1", []string{"a,b", "=a", ",b"}},
		{"postgres://u@h/db?application_name=me@x.org", "postgres://u@h/db?application_name=me@x.org", nil},
		{"host=h user=u password=P4ss dbname=d", "host=h user=u password=**** dbname=d", []string{"P4ss"}},
		{"host=h password = 'P4 ss\\' x' dbname=d", "host=h password = **** dbname=d", []string{"P4", " x'"}},
		{"host=h password='P4ss", "host=h password=****", []string{"P4ss"}},
		{"host=h sslpassword=K3y sslkey=/k.pem", "host=h sslpassword=**** sslkey=/k.pem", []string{"K3y"}},
		{"host=h junk P4ss", "host=h junk ****", []string{"P4ss"}},
		{"nats://admin:PW@127.0.0.1:4222", "nats://admin:****@127.0.0.1:4222", []string{"PW"}},
		{"nats://T0KEN@h:4222,nats://u:PW@h2:4222", "nats://****@h:4222,nats://u:****@h2:4222", []string{"T0KEN", "PW"}},
		{"T0KEN@h:4222", "****@h:4222", []string{"T0KEN"}},
		{"nats://u:pa,ss@h:4222,nats://h2:4222", "nats://u:****@h:4222,nats://h2:4222", []string{"pa", ",ss"}},
		{"nats://h1:4222,nats://T0K,EN@h2:4222", "nats://h1:4222,nats://****@h2:4222", []string{"T0K", "EN@"}},
		{"h1:4222,h2:4222", "h1:4222,h2:4222", nil},
		{"http://u:PW@host/token?key=K3y&client_secret=S3c&access_token=T0k&x=1#id_token=F", "http://u:****@host/token?key=****&client_secret=****&access_token=****&x=1#id_token=****", []string{"PW", "K3y", "S3c", "T0k", "=F"}},
		{"http://host/token?pass%77ord=P4ss", "http://host/token?pass%77ord=****", []string{"P4ss"}},
		{"http://host/t?api_key=K3y", "http://host/t?api_key=****", []string{"K3y"}},
		{"garbage", "garbage", nil},
		{"://x", "://x", nil},
		{"nats://h:notaport", "nats://h:notaport", nil},
	} {
		got := URL(tc.in)
		if got != tc.want {
			t.Errorf("URL(%q) = %q, want %q", tc.in, got, tc.want)
		}
		for _, s := range tc.secrets {
			if strings.Contains(got, s) {
				t.Errorf("URL(%q) = %q shows %q", tc.in, got, s)
			}
		}
	}
}

// TestURLHidesAnyPassword: whatever characters a password holds, percent-encoded or
// not, it never shows in the user info, keyword or query forms.
func TestURLHidesAnyPassword(t *testing.T) {
	specials := []string{":", "/", "?", "#", "@", ",", "=", "%", " ", "'", "\\", "&", ";", "[", "]"}
	for _, sp := range specials {
		pw := "Pw0" + sp + "Xq9"
		var forms []string
		for _, scheme := range []string{"postgres", "nats", "https"} {
			forms = append(forms,
				scheme+"://user:"+pw+"@host:1/db?sslmode=disable",
				scheme+"://user:"+url.QueryEscape(pw)+"@host:1/db")
			if scheme != "postgres" && sp != ":" { // postgres: user info without a colon is the role name; with one, it is user:password
				forms = append(forms, scheme+"://"+pw+"@host:1", scheme+"://"+url.QueryEscape(pw)+"@host:1")
			}
		}
		forms = append(forms,
			"host=h user=u password='"+strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(pw)+"' dbname=d",
			"postgres://u@h/db?password="+url.QueryEscape(pw)+"&sslmode=disable")
		if !strings.ContainsAny(sp, "&;#, ") {
			forms = append(forms, "host=h password="+pw+" dbname=d", "postgres://u@h/db?password="+pw)
		}
		for _, in := range forms {
			out := URL(in)
			for _, part := range []string{"Pw0", "Xq9"} {
				if strings.Contains(out, part) {
					t.Errorf("URL(%q) = %q shows %q", in, out, part)
				}
			}
		}
	}
}
