package client

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/chatmesh/chatmesh/crypto/noiseconn"
)

// Limits on a locate answer (GET /v1/locate, see PROTOCOL.md "Locating an
// edge"). An answer beyond them is refused whole.
const (
	// MaxLocateBytes bounds the body of a locate answer.
	MaxLocateBytes = 1 << 20
	// MaxLocatedEdges bounds the edges in a locate answer.
	MaxLocatedEdges = 64
	// MaxLocateTTL bounds ttl_s: a longer TTL is refused, not shortened.
	MaxLocateTTL = 24 * time.Hour
	// maxLocateRedirects bounds the redirects Locate follows (each to a
	// URL that passes the same scheme rule).
	maxLocateRedirects = 3
	// maxLocateURL bounds each URL and maxRegionName the region name in
	// an answer.
	maxLocateURL  = 2048
	maxRegionName = 128
)

// ErrLocate: locating an edge failed — the locator was unreachable or
// refused, or its answer was malformed, too large or empty. The detail
// says which; a refusal is a *LocateError.
var ErrLocate = errors.New("client: locate failed")

// LocateError is a locator's answer other than 200 (429 when the client
// asked too often, 503 when the edge list is unavailable, ...). It
// matches ErrLocate.
type LocateError struct {
	URL    string
	Status int
	// RetryAfter is the locator's Retry-After (whole seconds), 0 if none.
	RetryAfter time.Duration
	// Detail is the "error" field of the locator's JSON body, if any
	// (at most 200 bytes, control characters removed).
	Detail string
}

func (e *LocateError) Error() string {
	s := fmt.Sprintf("%v: %s answered %d %s", ErrLocate, e.URL, e.Status, http.StatusText(e.Status))
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(" (retry after %s)", e.RetryAfter)
	}
	return s
}

// Unwrap makes a LocateError match ErrLocate.
func (e *LocateError) Unwrap() error { return ErrLocate }

// LocatedEdge is one edge of a locate answer.
type LocatedEdge struct {
	// Region is the region the edge serves ("" if the locator names none).
	Region string
	// WS is the edge's WebSocket URL (ws:// or wss://), WT its
	// WebTransport URL (https://); at least one is set.
	WS, WT string
	// NoiseKey is the edge's Noise static public key (32 bytes): the key
	// the client authenticates the edge against in the handshake.
	NoiseKey []byte
	// CertHash is the SHA-256 of the edge's TLS certificate (for a
	// self-signed WebTransport certificate), nil when the answer has none.
	CertHash []byte
}

// Located is a locate answer: the edges to use, nearest first.
type Located struct {
	// Edges are in the locator's order (nearest healthy edge first); never
	// empty (an empty list is an error of Locate), at most MaxLocatedEdges.
	Edges []LocatedEdge
	// TTL is how long the answer may be used before locating again (0:
	// locate again at every reconnect).
	TTL time.Duration
}

// locateWire is the part of the locator's JSON answer the client reads.
// Fields it does not know (the locator also sends "client", "lat",
// "long", "distance_km") are ignored, so the locator may add fields;
// every field read is checked.
type locateWire struct {
	Edges *[]locateWireEdge `json:"edges"`
	TTLS  *int64            `json:"ttl_s"`
}

type locateWireEdge struct {
	Region   string `json:"region"`
	WS       string `json:"ws"`
	WT       string `json:"wt"`
	NoiseKey string `json:"noise_key"`
	CertHash string `json:"cert_hash"`
}

// Locate asks the locator at locateURL (GET, normally an edge's
// /v1/locate) which edges to use, nearest first. httpClient nil uses a
// plain http.Client with the default transport; ctx bounds the whole
// request. locateURL must be https://, or http:// to a loopback host
// (development): the answer names the Noise keys the client will trust, so
// it must not be readable or changeable on the way (see PROTOCOL.md).
// Redirects are followed at most 3 times, each under the same rule.
//
// The answer is refused (ErrLocate) when the status is not 200 (a
// *LocateError), the body is not JSON or larger than MaxLocateBytes, has
// trailing data, lacks "edges" or "ttl_s", lists no edge or more than
// MaxLocatedEdges, has a ttl_s outside [0, MaxLocateTTL], or any edge has
// neither a ws:// / wss:// WS nor an https:// WT URL, a URL with user
// info or a fragment, a noise_key that is not 32 bytes of hex, a cert_hash
// that is neither absent nor 32 bytes of hex, or a region name with
// control characters or longer than 128 bytes.
func Locate(ctx context.Context, locateURL string, httpClient *http.Client) (Located, error) {
	u, err := url.Parse(locateURL)
	if err != nil {
		return Located{}, fmt.Errorf("%w: locate url %q: %w", ErrLocate, locateURL, err)
	}
	if err := checkLocateURL(u); err != nil {
		return Located{}, err
	}
	hc := http.Client{}
	if httpClient != nil {
		hc = *httpClient // shallow copy: same transport, our redirect rule
	}
	hc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) > maxLocateRedirects {
			return fmt.Errorf("%w: more than %d redirects", ErrLocate, maxLocateRedirects)
		}
		return checkLocateURL(req.URL)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return Located{}, fmt.Errorf("%w: %w", ErrLocate, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return Located{}, fmt.Errorf("%w: %s: %w", ErrLocate, locateURL, err)
	}
	defer resp.Body.Close()
	if resp.ContentLength > MaxLocateBytes {
		return Located{}, fmt.Errorf("%w: %s: answer of %d bytes, more than %d", ErrLocate, locateURL, resp.ContentLength, MaxLocateBytes)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxLocateBytes+1))
	if err != nil {
		return Located{}, fmt.Errorf("%w: %s: read answer: %w", ErrLocate, locateURL, err)
	}
	if len(body) > MaxLocateBytes {
		return Located{}, fmt.Errorf("%w: %s: answer larger than %d bytes", ErrLocate, locateURL, MaxLocateBytes)
	}
	if resp.StatusCode != http.StatusOK {
		return Located{}, refusal(locateURL, resp, body)
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return Located{}, fmt.Errorf("%w: %s: content type %q, want application/json", ErrLocate, locateURL, resp.Header.Get("Content-Type"))
	}
	loc, err := decodeLocate(body)
	if err != nil {
		return Located{}, fmt.Errorf("%w: %s: %w", ErrLocate, locateURL, err)
	}
	return loc, nil
}

// checkLocateURL: https, or http to a loopback host; a host is required.
func checkLocateURL(u *url.URL) error {
	if u.Host == "" || u.User != nil {
		return fmt.Errorf("%w: locate url %q: needs a host and no user info", ErrLocate, u.Redacted())
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if isLoopbackHost(u.Hostname()) {
			return nil
		}
		return fmt.Errorf("%w: locate url %q: plain http is allowed only to a loopback address (development); use https", ErrLocate, u.Redacted())
	default:
		return fmt.Errorf("%w: locate url %q: scheme must be https (or http on loopback)", ErrLocate, u.Redacted())
	}
}

func isLoopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// refusal builds the LocateError of a non-200 answer.
func refusal(u string, resp *http.Response, body []byte) error {
	e := &LocateError{URL: u, Status: resp.StatusCode}
	if s, err := strconv.Atoi(strings.TrimSpace(resp.Header.Get("Retry-After"))); err == nil && s > 0 {
		e.RetryAfter = time.Duration(min(s, int(MaxLocateTTL/time.Second))) * time.Second
	}
	var eb struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(body, &eb) == nil {
		e.Detail = printable(eb.Error, 200)
	}
	return e
}

// decodeLocate checks and converts a 200 answer's body.
func decodeLocate(body []byte) (Located, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	var w locateWire
	if err := dec.Decode(&w); err != nil {
		return Located{}, fmt.Errorf("malformed answer: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Located{}, errors.New("malformed answer: data after the JSON object")
	}
	if w.Edges == nil || w.TTLS == nil {
		return Located{}, errors.New("malformed answer: \"edges\" and \"ttl_s\" are required")
	}
	ttl := *w.TTLS
	if ttl < 0 || ttl > int64(MaxLocateTTL/time.Second) {
		return Located{}, fmt.Errorf("malformed answer: ttl_s %d outside [0, %d]", ttl, int64(MaxLocateTTL/time.Second))
	}
	edges := *w.Edges
	switch {
	case len(edges) == 0:
		return Located{}, fmt.Errorf("no healthy edge (locate again after %d s)", ttl)
	case len(edges) > MaxLocatedEdges:
		return Located{}, fmt.Errorf("malformed answer: %d edges, more than %d", len(edges), MaxLocatedEdges)
	}
	loc := Located{TTL: time.Duration(ttl) * time.Second, Edges: make([]LocatedEdge, 0, len(edges))}
	for i, we := range edges {
		e, err := checkLocatedEdge(we)
		if err != nil {
			return Located{}, fmt.Errorf("malformed answer: edge %d: %w", i, err)
		}
		loc.Edges = append(loc.Edges, e)
	}
	return loc, nil
}

func checkLocatedEdge(we locateWireEdge) (LocatedEdge, error) {
	e := LocatedEdge{Region: we.Region, WS: we.WS, WT: we.WT}
	if len(we.Region) > maxRegionName || printable(we.Region, maxRegionName) != we.Region {
		return e, errors.New("region name too long or not printable")
	}
	if we.WS == "" && we.WT == "" {
		return e, errors.New("neither ws nor wt")
	}
	if we.WS != "" {
		if err := checkEdgeURL(we.WS, "ws", "wss"); err != nil {
			return e, fmt.Errorf("ws: %w", err)
		}
	}
	if we.WT != "" {
		if err := checkEdgeURL(we.WT, "https"); err != nil {
			return e, fmt.Errorf("wt: %w", err)
		}
	}
	k, err := hex.DecodeString(we.NoiseKey)
	if err != nil || len(k) != noiseconn.KeyLen {
		return e, fmt.Errorf("noise_key is not %d bytes of hex", noiseconn.KeyLen)
	}
	e.NoiseKey = k
	if we.CertHash != "" {
		h, err := hex.DecodeString(we.CertHash)
		if err != nil || len(h) != 32 {
			return e, errors.New("cert_hash is not 32 bytes of hex")
		}
		e.CertHash = h
	}
	return e, nil
}

func checkEdgeURL(s string, schemes ...string) error {
	if len(s) > maxLocateURL {
		return fmt.Errorf("url longer than %d bytes", maxLocateURL)
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("url: %w", err)
	}
	ok := false
	for _, sc := range schemes {
		ok = ok || u.Scheme == sc
	}
	switch {
	case !ok:
		return fmt.Errorf("scheme %q, want one of %v", u.Scheme, schemes)
	case u.Host == "":
		return errors.New("url without a host")
	case u.User != nil || u.Fragment != "":
		return errors.New("url with user info or a fragment")
	}
	return nil
}

// printable returns s cut to at most n bytes (at a rune boundary) with
// control and invalid characters removed: locator text may reach a
// terminal.
func printable(s string, n int) string {
	var b strings.Builder
	for _, r := range s {
		if r == utf8.RuneError || unicode.IsControl(r) {
			continue
		}
		if b.Len()+utf8.RuneLen(r) > n {
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}
