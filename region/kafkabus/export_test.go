package kafkabus

// WriterBatchStats reports the writer's average batch size and average
// produce request time since the last call (for benchmarks).
func (b *Bus) WriterBatchStats() (avgBatch float64, avgWriteMs float64) {
	s := b.writer.Stats()
	return float64(s.BatchSize.Avg), float64(s.WriteTime.Avg.Milliseconds())
}
