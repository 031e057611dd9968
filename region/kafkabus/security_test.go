package kafkabus_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/region/kafkabus"
)

// selfSigned returns a server certificate for 127.0.0.1 and a pool that
// trusts it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kafka test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// TestTLSAndSASLAgainstBroker: a Bus talks to a broker that requires TLS
// and SASL (franz-go's kfake, the embedded broker, with a TLS listener and
// PLAIN / SCRAM-SHA-256 / SCRAM-SHA-512 users): a real handshake and
// authentication on every path the bus uses (topic creation through the
// controller, metadata, produce, a group consumer). A wrong password, a
// missing SASL setting and a plaintext connection are refused.
//
// Apache Kafka's own SASL_SSL listener is not exercised here (see
// deploy/kafka/README.md): the production wiring is the same kafka-go
// Transport and Dialer fields.
func TestTLSAndSASLAgainstBroker(t *testing.T) {
	cert, pool := selfSigned(t)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.EnableSASL(),
		kfake.Superuser("SCRAM-SHA-256", "link256", "s3cret-256"),
		kfake.Superuser("SCRAM-SHA-512", "link512", "s3cret-512"),
		kfake.Superuser("PLAIN", "linkplain", "s3cret-plain"),
		kfake.TLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	brokers := c.ListenAddrs()
	clientTLS := &tls.Config{RootCAs: pool}

	ok := []kafkabus.SASL{
		{Mechanism: kafkabus.SASLScramSHA256, User: "link256", Password: "s3cret-256"},
		{Mechanism: kafkabus.SASLScramSHA512, User: "link512", Password: "s3cret-512"},
		{Mechanism: kafkabus.SASLPlain, User: "linkplain", Password: "s3cret-plain"},
	}
	for i, s := range ok {
		t.Run(s.Mechanism, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			b, err := kafkabus.New(kafkabus.Config{Brokers: brokers, TLS: clientTLS, SASL: s, Logger: testLogger()})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			topic := "secure-" + s.Mechanism
			if err := b.EnsureTopic(ctx, topic, 2); err != nil {
				t.Fatalf("EnsureTopic: %v", err)
			}
			want := []byte{byte(i), 'x'}
			if err := b.Produce(ctx, core.BusRecord{Topic: topic, Key: []byte("k"), Value: want}); err != nil {
				t.Fatalf("Produce: %v", err)
			}
			got := make(chan []byte, 1)
			cctx, ccancel := context.WithCancel(ctx)
			defer ccancel()
			go b.Consume(cctx, core.ConsumeSpec{Topic: topic, Group: topic + ".g"}, func(_ context.Context, r core.BusRecord) error {
				select {
				case got <- r.Value:
				default:
				}
				return nil
			})
			select {
			case v := <-got:
				if string(v) != string(want) {
					t.Fatalf("consumed %q, want %q", v, want)
				}
			case <-ctx.Done():
				t.Fatal("the group consumer got nothing")
			}
		})
	}

	refused := map[string]kafkabus.Config{
		"wrong password": {TLS: clientTLS, SASL: kafkabus.SASL{Mechanism: kafkabus.SASLScramSHA256, User: "link256", Password: "guess"}},
		"wrong user":     {TLS: clientTLS, SASL: kafkabus.SASL{Mechanism: kafkabus.SASLScramSHA512, User: "nobody", Password: "s3cret-512"}},
		"no SASL":        {TLS: clientTLS},
		"no TLS":         {SASL: ok[0]},
		"untrusted cert": {TLS: &tls.Config{RootCAs: x509.NewCertPool()}, SASL: ok[0]},
	}
	for name, cfg := range refused {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cfg.Brokers, cfg.Logger, cfg.DialTimeout = brokers, testLogger(), 2*time.Second
			b, err := kafkabus.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			err = b.Produce(ctx, core.BusRecord{Topic: "secure-" + kafkabus.SASLScramSHA256, Value: []byte("intruder")})
			if err == nil {
				t.Fatal("produce succeeded")
			}
			t.Logf("produce refused: %v", err)
			if err := b.EnsureTopic(ctx, "intruder", 1); err == nil {
				t.Fatal("EnsureTopic succeeded")
			}
		})
	}
}
