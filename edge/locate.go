package edge

import (
	"net/http"
	"strconv"
	"time"
)

// LocatePath is where an edge serves Config.Locate (GET /v1/locate), on
// its WebSocket listener. It equals region/geo.Path (the edge does not
// import the locator; a test checks the two agree).
const LocatePath = "/v1/locate"

// locateLimitedBody is the JSON body of a refused locate request; it has the shape
// of the locator's own errors ({"error": "..."}).
const locateLimitedBody = `{"error":"too many locate requests from this address"}` + "\n"

// serveLocate charges the request to its client's locate budget and hands
// it to Config.Locate, or answers 429 with Retry-After. The request was
// admitted like every other on the listener (MaxConns, MaxAcceptPerIP at
// accept; HandshakeTimeout for headers, body, response and idle keep-alive;
// 16 KiB of headers): the budget bounds how many requests a kept-alive
// connection may make, which the accept limits alone do not.
func (e *Edge) serveLocate(w http.ResponseWriter, r *http.Request) {
	e.n.locateRequests.Add(1)
	key := e.locateKey(r)
	if ok, wait := e.adm.locate.Allow(key, e.cfg.Now(), 1); !ok {
		e.n.locateLimited.Add(1)
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-store")
		h.Set("Retry-After", strconv.FormatInt(retryAfterSeconds(wait), 10))
		h.Set("Content-Length", strconv.Itoa(len(locateLimitedBody)))
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = w.Write([]byte(locateLimitedBody))
		return
	}
	e.cfg.Locate.ServeHTTP(w, r)
}

// locateKey is the per-IP limiter key of a locate request: the address
// Config.LocateClientAddr gives (the client behind trusted proxies), else
// the TCP peer; an IPv6 address counts by its /64 (ipKey).
func (e *Edge) locateKey(r *http.Request) string {
	if f := e.cfg.LocateClientAddr; f != nil {
		if a := f(r); a.IsValid() {
			return ipKey(a.Unmap().WithZone("").String())
		}
	}
	return ipKey(clientIP(r.RemoteAddr))
}

// retryAfterSeconds is wait in whole seconds, rounded up, at least 1 (the
// Retry-After header has a resolution of one second).
func retryAfterSeconds(wait time.Duration) int64 {
	s := int64((wait + time.Second - 1) / time.Second)
	return max(s, 1)
}
