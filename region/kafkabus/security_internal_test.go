package kafkabus

import (
	"crypto/tls"
	"errors"
	"testing"
)

// TestSecurityConfig: New builds the configured SASL mechanism and TLS
// configuration into the producer's Transport, the Dialer (group consumers,
// controller connections) and every fresh Transport, and refuses an unusable
// SASL setting.
func TestSecurityConfig(t *testing.T) {
	ca := &tls.Config{ServerName: "kafka.eu-central.internal"}
	cases := []struct {
		name     string
		sasl     SASL
		tls      *tls.Config
		wantMech string // "" : none
		wantErr  bool
	}{
		{name: "none"},
		{name: "tls only", tls: ca},
		{name: "plain", sasl: SASL{Mechanism: "plain", User: "u", Password: "p"}, tls: ca, wantMech: "PLAIN"},
		{name: "scram-sha-256", sasl: SASL{Mechanism: "scram-sha-256", User: "u", Password: "p"}, tls: ca, wantMech: "SCRAM-SHA-256"},
		{name: "scram-sha-512 upper case", sasl: SASL{Mechanism: "SCRAM-SHA-512", User: "u", Password: "p"}, wantMech: "SCRAM-SHA-512"},
		{name: "unknown mechanism", sasl: SASL{Mechanism: "gssapi", User: "u", Password: "p"}, wantErr: true},
		{name: "no password", sasl: SASL{Mechanism: "scram-sha-256", User: "u"}, wantErr: true},
		{name: "no user", sasl: SASL{Mechanism: "plain", Password: "p"}, wantErr: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := New(Config{Brokers: []string{"127.0.0.1:1"}, SASL: tc.sasl, TLS: tc.tls})
			if tc.wantErr {
				if !errors.Is(err, ErrInvalidConfig) {
					t.Fatalf("New: %v, want ErrInvalidConfig", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			fresh := b.newTransport()
			for what, m := range map[string]interface{ Name() string }{
				"transport": b.transport.SASL, "dialer": b.dialer.SASLMechanism, "fresh transport": fresh.SASL} {
				switch {
				case tc.wantMech == "" && m != nil:
					t.Errorf("%s: SASL %s, want none", what, m.Name())
				case tc.wantMech != "" && (m == nil || m.Name() != tc.wantMech):
					t.Errorf("%s: SASL %v, want %s", what, m, tc.wantMech)
				}
			}
			for what, c := range map[string]*tls.Config{"transport": b.transport.TLS, "dialer": b.dialer.TLS, "fresh transport": fresh.TLS} {
				switch {
				case tc.tls == nil && c != nil:
					t.Errorf("%s: TLS set, want plaintext", what)
				case tc.tls != nil && (c == nil || c.ServerName != tc.tls.ServerName || c.MinVersion < tls.VersionTLS12):
					t.Errorf("%s: TLS %+v, want the configured one with TLS 1.2 or later", what, c)
				}
			}
			if tc.tls != nil && tc.tls.MinVersion != 0 {
				t.Error("the caller's tls.Config was modified")
			}
		})
	}
}
