package report

import (
	"bufio"
	"encoding/xml"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"strings"
	"time"
)

// The picture's geometry, in SVG user units.
const (
	svgW, svgH       = 1200.0, 520.0
	padL, padR       = 70.0, 80.0
	padT, padB       = 100.0, 60.0
	plotW            = svgW - padL - padR
	plotH            = svgH - padT - padB
	throughputColour = "#1f77b4"
	latencyColour    = "#d62728"
)

var faultColours = []string{"#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#2ca02c"}

// WriteSVG draws r's time line as one self-contained SVG document (no
// scripts, fonts or links), for a browser: x is seconds since the run
// started; each fault is a shaded band labelled with its kind and target
// (a tooltip gives its times); the blue line is acks per second (left
// axis), the red line the p99 ack latency of each bucket (right axis,
// broken where a bucket has no ack).
func WriteSVG(w io.Writer, r *Report) error {
	bw := bufio.NewWriter(w)
	p := func(format string, args ...any) { fmt.Fprintf(bw, format, args...) }
	esc := func(s string) string {
		var b strings.Builder
		_ = xml.EscapeText(&b, []byte(s))
		return b.String()
	}

	dur := r.End.Sub(r.Start).Seconds()
	if dur <= 0 {
		dur = 1
	}
	bucketS := r.BucketMs / 1000
	if bucketS <= 0 {
		bucketS = 1
	}
	maxRate, maxLat := 1.0, 1.0
	for _, b := range r.Throughput {
		maxRate = math.Max(maxRate, float64(b.Acked)/bucketS)
		maxLat = math.Max(maxLat, b.AckP99Ms)
	}
	maxRate, maxLat = niceCeil(maxRate), niceCeil(maxLat)
	x := func(sec float64) float64 { return padL + plotW*sec/dur }
	yRate := func(v float64) float64 { return padT + plotH*(1-v/maxRate) }
	yLat := func(v float64) float64 { return padT + plotH*(1-v/maxLat) }
	offset := func(t time.Time) float64 { return math.Min(math.Max(t.Sub(r.Start).Seconds(), 0), dur) }

	p(`<?xml version="1.0" encoding="UTF-8"?>` + "\n")
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n", svgW, svgH, svgW, svgH)
	p(`<title>chatmesh simulation, seed %d</title>`+"\n", r.Seed)
	p(`<rect x="0" y="0" width="%.0f" height="%.0f" fill="white"/>`+"\n", svgW, svgH)
	verdict := "invariants OK"
	if err := r.Invariants.Err(); err != nil {
		verdict = "INVARIANTS VIOLATED"
	}
	p(`<text x="%.0f" y="24" font-size="16" font-weight="bold">chatmesh simulation — seed %d — %s — %d acked, %d faults</text>`+"\n",
		padL, r.Seed, verdict, r.Invariants.Acked, len(r.Faults))

	// Fault bands, labels staggered over three rows.
	p(`<g id="faults">` + "\n")
	for i, f := range r.Faults {
		end := f.End
		if end.IsZero() {
			end = r.End
		}
		x0, x1 := x(offset(f.Start)), x(offset(end))
		col := colourOf(f.Kind)
		label := f.Kind + " " + f.Target
		p(`<rect class="fault" x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" fill-opacity="0.18" stroke="%s" stroke-opacity="0.5"><title>%s: %s → %s %s</title></rect>`+"\n",
			x0, padT, math.Max(x1-x0, 1), plotH, col, col, esc(label),
			f.Start.UTC().Format(time.RFC3339Nano), end.UTC().Format(time.RFC3339Nano), esc(f.Detail))
		lx, anchor := x0+2, "start"
		if lx > svgW-padR-160 { // near the right edge: end the label at the band's end
			lx, anchor = x1-2, "end"
		}
		p(`<text x="%.1f" y="%.1f" text-anchor="%s" fill="%s" font-size="11">%s</text>`+"\n", lx, padT-8-14*float64(i%3), anchor, col, esc(label))
	}
	p("</g>\n")

	// Axes and grid.
	p(`<g id="axes" stroke="#333" fill="none">`+"\n"+`<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f"/>`+"\n</g>\n", padL, padT, plotW, plotH)
	p(`<g id="ticks" font-size="11">` + "\n")
	for i := 0; i <= 5; i++ {
		v := float64(i) / 5
		yy := padT + plotH*(1-v)
		p(`<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#ddd"/>`+"\n", padL, yy, padL+plotW, yy)
		p(`<text x="%.0f" y="%.1f" text-anchor="end" fill="%s">%s</text>`+"\n", padL-6, yy+4, throughputColour, num(v*maxRate))
		p(`<text x="%.0f" y="%.1f" fill="%s">%s</text>`+"\n", padL+plotW+6, yy+4, latencyColour, num(v*maxLat))
	}
	step := niceCeil(dur / 10)
	for s := 0.0; s <= dur+1e-9; s += step {
		p(`<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#333"/>`+"\n", x(s), padT+plotH, x(s), padT+plotH+5)
		p(`<text x="%.1f" y="%.0f" text-anchor="middle">%s</text>`+"\n", x(s), padT+plotH+18, num(s))
	}
	p("</g>\n")
	p(`<text x="%.0f" y="%.0f" text-anchor="middle">time since start (s)</text>`+"\n", padL+plotW/2, svgH-18)
	p(`<text transform="translate(18 %.0f) rotate(-90)" text-anchor="middle" fill="%s">acks per second</text>`+"\n", padT+plotH/2, throughputColour)
	p(`<text transform="translate(%.0f %.0f) rotate(90)" text-anchor="middle" fill="%s">ack latency p99 per bucket (ms)</text>`+"\n", svgW-18, padT+plotH/2, latencyColour)

	// The two lines, plotted at bucket centres.
	// The latency line breaks where a bucket has no ack (no latency to
	// show), with a dot for a lone bucket.
	var rate, lat strings.Builder
	pen := "M"
	for _, b := range r.Throughput {
		cx := x(math.Min(b.OffsetMs/1000+bucketS/2, dur))
		fmt.Fprintf(&rate, "%.1f,%.1f ", cx, yRate(float64(b.Acked)/bucketS))
		if b.Acked == 0 {
			pen = "M"
			continue
		}
		fmt.Fprintf(&lat, "%s%.1f,%.1f h0.1 ", pen, cx, yLat(b.AckP99Ms))
		pen = "L"
	}
	p(`<polyline id="throughput" fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`+"\n", throughputColour, strings.TrimSpace(rate.String()))
	if lat.Len() > 0 {
		p(`<path id="latency" fill="none" stroke="%s" stroke-width="1.5" stroke-linecap="round" d="%s"/>`+"\n", latencyColour, strings.TrimSpace(lat.String()))
	}

	// Legend.
	lx, ly := padL, 44.0
	p(`<g id="legend" font-size="11">` + "\n")
	p(`<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="%s" stroke-width="2"/><text x="%.0f" y="%.0f">acks per second</text>`+"\n", lx, ly, lx+20, ly, throughputColour, lx+26, ly+4)
	p(`<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="%s" stroke-width="2"/><text x="%.0f" y="%.0f">ack latency p99 (ms)</text>`+"\n", lx+120, ly, lx+140, ly, latencyColour, lx+146, ly+4)
	p(`<rect x="%.0f" y="%.0f" width="20" height="10" fill="#888" fill-opacity="0.3"/><text x="%.0f" y="%.0f">fault (kind target; hover for times)</text>`+"\n", lx, ly+10, lx+26, ly+19)
	p("</g>\n</svg>\n")
	return bw.Flush()
}

func colourOf(kind string) string {
	h := fnv.New32a()
	h.Write([]byte(kind))
	return faultColours[h.Sum32()%uint32(len(faultColours))]
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*e >= v {
			return m * e
		}
	}
	return 10 * e
}

func num(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.3g", v)
}
