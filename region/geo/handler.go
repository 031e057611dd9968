package geo

import (
	"encoding/json"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
)

// Path is where an edge mounts Handler.
const Path = "/v1/locate"

// maxForwardedHops bounds how many X-Forwarded-For entries the handler
// walks (from the right); a longer chain stops at the last one examined.
const maxForwardedHops = 16

// Handler serves GET /v1/locate: the Answer for the requesting client as
// JSON. Only GET is allowed (405 otherwise); the request body is never
// read; the response holds at most Config.MaxEdges edges. An EdgeSource
// failure is a 503. The client address comes from ClientAddr.
func (l *Locator) Handler() http.Handler {
	return http.HandlerFunc(l.serveLocate)
}

type errorBody struct {
	Error string `json:"error"`
}

func (l *Locator) serveLocate(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	if r.Method != http.MethodGet {
		h.Set("Allow", http.MethodGet)
		writeJSON(w, http.StatusMethodNotAllowed, errorBody{Error: "method not allowed"})
		return
	}
	addr := l.ClientAddr(r)
	ans, err := l.Locate(r.Context(), addr)
	if err != nil {
		l.log.Warn("geo: locate failed", "err", err)
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: "edge list unavailable"})
		return
	}
	// The answer depends on who asks: shared caches must not keep it.
	h.Set("Cache-Control", "private, max-age="+strconv.Itoa(ans.TTLS))
	writeJSON(w, http.StatusOK, ans)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil { // only plain structs of strings and numbers: cannot happen
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	b = append(b, '\n')
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// ClientAddr returns the address a request is located by. It is the TCP
// peer (RemoteAddr) unless that peer is in Config.TrustedProxies; then the
// X-Forwarded-For chain (every such header, in order, comma-separated) is
// walked from the right, skipping trusted proxies, and the first untrusted
// hop is the client. Walking stops at a malformed entry, or after
// maxForwardedHops entries, and the last well-formed hop reached is used;
// if every hop is trusted, the left-most one is. Entries may carry a port
// ("198.51.100.7:4711", "[2001:db8::1]:443"). An unparsable RemoteAddr gives
// the zero Addr (located nowhere: the default order).
func (l *Locator) ClientAddr(r *http.Request) netip.Addr {
	peer := parseHop(r.RemoteAddr)
	if !peer.IsValid() || !l.isTrusted(peer) {
		return peer
	}
	hops := r.Header.Values("X-Forwarded-For")
	client := peer
	seen := 0
	for i := len(hops) - 1; i >= 0; i-- {
		rest := hops[i]
		for rest != "" {
			var entry string
			if j := strings.LastIndexByte(rest, ','); j >= 0 {
				entry, rest = rest[j+1:], rest[:j]
			} else {
				entry, rest = rest, ""
			}
			entry = strings.TrimSpace(entry)
			if entry == "" && rest != "" {
				continue // tolerate "a,,b" and trailing commas
			}
			hop := parseHop(entry)
			if !hop.IsValid() {
				return client
			}
			client = hop
			if !l.isTrusted(hop) {
				return client
			}
			if seen++; seen >= maxForwardedHops {
				return client
			}
		}
	}
	return client
}

func (l *Locator) isTrusted(a netip.Addr) bool {
	for _, p := range l.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// parseHop parses "addr", "addr:port" or "[addr]:port"; the result is
// unmapped and zoneless, or the zero Addr.
func parseHop(s string) netip.Addr {
	if len(s) > 64 { // longer than any address with port and zone we accept
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		ap, err2 := netip.ParseAddrPort(s)
		if err2 != nil {
			return netip.Addr{}
		}
		a = ap.Addr()
	}
	return a.Unmap().WithZone("")
}
