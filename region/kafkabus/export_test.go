package kafkabus

import (
	"net"
	"sync/atomic"
)

// WriterBatchStats reports the writer's average batch size and average
// produce request time since the last call (for benchmarks).
func (b *Bus) WriterBatchStats() (avgBatch float64, avgWriteMs float64) {
	s := b.writer.Stats()
	return float64(s.BatchSize.Avg), float64(s.WriteTime.Avg.Milliseconds())
}

// InjectAcceptErrors makes the first n Accept calls of the embedded
// broker's TCP listener fail with err (as EMFILE does when the process runs
// out of descriptors), below the resilient listener.
func InjectAcceptErrors(cfg *EmbeddedConfig, n int64, err error) {
	cfg.innerListener = func(l net.Listener) net.Listener {
		f := &failingListener{Listener: l, err: err}
		f.left.Store(n)
		return f
	}
}

type failingListener struct {
	net.Listener
	err  error
	left atomic.Int64
}

func (f *failingListener) Accept() (net.Conn, error) {
	if f.left.Add(-1) >= 0 {
		return nil, f.err
	}
	return f.Listener.Accept()
}

// CountAccepts makes the embedded broker count the connections it accepts.
func CountAccepts(cfg *EmbeddedConfig) *atomic.Int64 {
	n := new(atomic.Int64)
	cfg.innerListener = func(l net.Listener) net.Listener { return &countingListener{Listener: l, n: n} }
	return n
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (c *countingListener) Accept() (net.Conn, error) {
	conn, err := c.Listener.Accept()
	if err == nil {
		c.n.Add(1)
	}
	return conn, err
}

// LogBounds returns each partition's log start offset and high watermark.
func (e *Embedded) LogBounds(topic string) (start, end []int64) {
	for _, pi := range e.c.PartitionInfos(topic) {
		start = append(start, pi.LogStartOffset)
		end = append(end, pi.HighWatermark)
	}
	return start, end
}
