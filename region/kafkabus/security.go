package kafkabus

import (
	"crypto/tls"
	"fmt"
	"strings"

	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"
)

// SASL mechanisms (Config.SASL.Mechanism), spelled as on the command line.
const (
	SASLPlain       = "plain"
	SASLScramSHA256 = "scram-sha-256"
	SASLScramSHA512 = "scram-sha-512"
)

// SASL authenticates every connection of a Bus to the brokers. The zero
// value (no Mechanism) authenticates nothing.
//
// PLAIN sends the password itself: use it only inside TLS (Config.TLS).
// SCRAM proves knowledge of the password without sending it, but does not
// encrypt the connection either; over an untrusted network use it with
// TLS as well.
type SASL struct {
	// Mechanism is "" (none), SASLPlain, SASLScramSHA256 or
	// SASLScramSHA512 (case-insensitive).
	Mechanism string
	User      string
	Password  string
}

// mechanism builds the kafka-go SASL mechanism, or nil for none.
func (s SASL) mechanism() (sasl.Mechanism, error) {
	m := strings.ToLower(strings.TrimSpace(s.Mechanism))
	if m == "" {
		return nil, nil
	}
	if s.User == "" || s.Password == "" {
		return nil, fmt.Errorf("%w: SASL %s needs a user and a password", ErrInvalidConfig, m)
	}
	switch m {
	case SASLPlain:
		return plain.Mechanism{Username: s.User, Password: s.Password}, nil
	case SASLScramSHA256, SASLScramSHA512:
		algo := scram.SHA256
		if m == SASLScramSHA512 {
			algo = scram.SHA512
		}
		mech, err := scram.Mechanism(algo, s.User, s.Password)
		if err != nil {
			return nil, fmt.Errorf("%w: SASL %s: %w", ErrInvalidConfig, m, err)
		}
		return mech, nil
	default:
		return nil, fmt.Errorf("%w: unknown SASL mechanism %q (want %s, %s or %s)", ErrInvalidConfig, s.Mechanism, SASLPlain, SASLScramSHA256, SASLScramSHA512)
	}
}

// security is the TLS configuration and SASL mechanism a Bus applies to
// every kafka-go Transport and Dialer it makes.
type security struct {
	tls  *tls.Config
	sasl sasl.Mechanism
}

func newSecurity(cfg Config) (security, error) {
	m, err := cfg.SASL.mechanism()
	if err != nil {
		return security{}, err
	}
	var tc *tls.Config
	if cfg.TLS != nil {
		tc = cfg.TLS.Clone()
		if tc.MinVersion < tls.VersionTLS12 {
			tc.MinVersion = tls.VersionTLS12
		}
	}
	return security{tls: tc, sasl: m}, nil
}
