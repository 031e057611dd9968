package main

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strings"
)

// viaFlag is a repeatable ADDR=VIA flag (--directory-via, --link-via):
// connections to host:port ADDR are dialed to host:port VIA instead. The
// region simulator puts a fault proxy on every path between regions this
// way; the addresses the mesh publishes (raft peers, Kafka metadata) stay
// the real ones.
type viaFlag map[string]string

func (v viaFlag) String() string {
	keys := make([]string, 0, len(v))
	for k := range v {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+v[k])
	}
	return strings.Join(parts, " ")
}

func (v viaFlag) Set(s string) error {
	addr, via, ok := strings.Cut(s, "=")
	addr, via = strings.TrimSpace(addr), strings.TrimSpace(via)
	if !ok {
		return fmt.Errorf("want ADDR=VIA (host:port=host:port), got %q", s)
	}
	for _, a := range []string{addr, via} {
		if host, port, err := net.SplitHostPort(a); err != nil || host == "" || port == "" || port == "0" {
			return fmt.Errorf("%q: want a concrete host:port", a)
		}
	}
	if _, dup := v[addr]; dup {
		return fmt.Errorf("%s given twice", addr)
	}
	v[addr] = via
	return nil
}

// dial returns a dial function that sends each ADDR of the flag to its
// VIA and dials every other address directly; nil when the flag is empty
// (the callers' default dialer).
func (v viaFlag) dial() func(ctx context.Context, network, addr string) (net.Conn, error) {
	if len(v) == 0 {
		return nil
	}
	routes := make(map[string]string, len(v))
	for a, via := range v {
		routes[a] = via
	}
	var d net.Dialer
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if via, ok := routes[addr]; ok {
			c, err := d.DialContext(ctx, network, via)
			if err != nil {
				return nil, fmt.Errorf("dial %s via %s: %w", addr, via, err)
			}
			return c, nil
		}
		return d.DialContext(ctx, network, addr)
	}
}
