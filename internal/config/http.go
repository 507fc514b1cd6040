package config

import (
	"fmt"
	"net"
	"strconv"
)

// DefaultHTTPAddr is where `refresher consume` serves /metrics, /healthz and /readyz
// when REFRESHER_HTTP_ADDR is unset: loopback, so nothing is exposed by accident.
const DefaultHTTPAddr = "127.0.0.1:9090"

// HTTP configures the consume process's metrics and health endpoints; --http
// overrides it.
type HTTP struct {
	Addr string `envconfig:"REFRESHER_HTTP_ADDR" default:"127.0.0.1:9090" desc:"host:port of /metrics, /healthz and /readyz for consume (--http); empty disables"`
}

// LoadHTTP loads and validates REFRESHER_HTTP_ADDR.
func LoadHTTP() (HTTP, error) {
	var h HTTP
	if err := Load(&h); err != nil {
		return h, err
	}
	if err := ValidateHTTPAddr(h.Addr); err != nil {
		return h, Errorf("REFRESHER_HTTP_ADDR=%q: %w", h.Addr, err)
	}
	return h, nil
}

// ValidateHTTPAddr accepts "" (disabled) or host:port with a numeric port, so that a
// typo stops the process at start instead of surfacing as a listen error later or a
// service name being looked up.
func ValidateHTTPAddr(addr string) error {
	if addr == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want host:port like %s, or empty to disable: %w", DefaultHTTPAddr, err)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q: want a number from 0 to 65535", port)
	}
	return nil
}
