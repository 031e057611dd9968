package main

import (
	"flag"
	"time"

	"github.com/chatmesh/chatmesh/region"
)

// retentionFlags are the message and topic retention flags of `chatmesh
// dev` and `chatmesh region` (region.RetentionConfig, region.TopicRetention).
type retentionFlags struct {
	off                               *bool
	maxAge, history, resend, interval *time.Duration
	ingress                           *time.Duration
}

func addRetentionFlags(fs *flag.FlagSet) *retentionFlags {
	return &retentionFlags{
		off:      fs.Bool("retention-off", false, "keep every message and idempotency key forever (no retention worker)"),
		maxAge:   fs.Duration("retention-max-age", region.DefaultRetentionMaxAge, "delete messages older than this even if some member device never acknowledged them (devices that return later are told the seqs expired)"),
		history:  fs.Duration("retention-history", 0, "history mode: keep every message at least this long whatever the acks (0: delete once every member device acknowledged it and the resend window passed); at most --retention-max-age"),
		resend:   fs.Duration("resend-window", region.DefaultResendWindow, "how long a client_msg_id is remembered: a resend within it gets the original seq, after it is stored again (clients must not resend older messages without syncing first)"),
		interval: fs.Duration("retention-interval", region.DefaultRetentionInterval, "pause between retention passes"),
		ingress:  fs.Duration("ingress-retention", 7*24*time.Hour, "Kafka retention.ms of the ingress topic: must exceed the longest sequencer outage (records older are deleted unread)"),
	}
}

// apply sets the flags on a region's configuration.
func (f *retentionFlags) apply(c *region.Config) {
	c.Retention = region.RetentionConfig{Disabled: *f.off, MaxAge: *f.maxAge, History: *f.history,
		ResendWindow: *f.resend, Interval: *f.interval}
	c.TopicRetention.Ingress.Time = *f.ingress
}

// check validates the policy before anything starts.
func (f *retentionFlags) check() error {
	var c region.Config
	f.apply(&c)
	return c.Retention.Validate()
}
