package stack

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/crypto/noiseconn"
	"github.com/chatmesh/chatmesh/edge"
	"github.com/chatmesh/chatmesh/region"
	"github.com/chatmesh/chatmesh/region/kafkabus"
	"github.com/chatmesh/chatmesh/region/pebblestore"
	"github.com/chatmesh/chatmesh/region/pgstore"
)

// Config describes the stack. Only DataDir is required.
type Config struct {
	DataDir      string   // keys, certificate, Pebble data
	KafkaBrokers []string // empty: an embedded kfake broker
	PostgresDSN  string   // empty: Pebble under DataDir/pebble
	PGSchema     string   // PostgreSQL schema (created if absent); empty: the DSN's default
	Region       string   // default "local"
	EdgeID       string   // default "edge-1"
	WSAddr       string   // default "127.0.0.1:0"
	WTAddr       string   // default "127.0.0.1:0"; "-" disables WebTransport
	Partitions   int      // ingress partitions, default DevPartitions
	// Namespace, if set, prefixes the ingress and presence topics and the
	// sequencer group ("<ns>.ingress"), so several stacks can share one
	// Kafka cluster (tests). Edge topics are already unique per EdgeID.
	Namespace string
	// MaxConnsPerIP overrides the edge's per-IP connection limit (0: the
	// edge default). Load tests from one address need it raised.
	MaxConnsPerIP int
	Notifier      core.Notifier
	Logger        *slog.Logger
	// EdgeConfig, if set, adjusts the edge's configuration before start
	// (limits, timeouts).
	EdgeConfig func(*edge.Config)
	// RegionConfig, if set, adjusts the region's configuration before
	// start (e.g. its prekey fetch limits).
	RegionConfig func(*region.Config)
}

// Endpoints are what a client needs to connect.
type Endpoints struct {
	Region   string `json:"region"`
	EdgeID   string `json:"edge_id"`
	WS       string `json:"ws"`
	WT       string `json:"wt,omitempty"`
	CertHash string `json:"cert_hash,omitempty"` // hex SHA-256 of the WebTransport certificate
	EdgeKey  string `json:"edge_key"`            // hex Noise static public key of the edge
	Kafka    string `json:"kafka"`
	Store    string `json:"store"`
}

// Stack is a running region with one edge.
type Stack struct {
	Store core.Store
	Bus   core.Bus // the region's bus (sequencer, fan-out)
	// EdgeBus is the edge's own Kafka client: the edge's ingress writes and
	// the sequencer's fan-out writes do not queue behind each other (each
	// kafkabus writer has one write in flight).
	EdgeBus core.Bus
	Region  *region.Region
	Edge    *edge.Edge

	cfg      Config
	embedded *kafkabus.Embedded
	ends     Endpoints
	once     sync.Once
	shutErr  error
}

// DevPartitions is the ingress partition count of a stack's regions
// unless set (a production region's default is 8, cmd node --partitions).
// A stack runs on one machine; a partition is the unit of sequencing
// parallelism, and each costs its own fetch loop — a connection, a
// long-poll and a chain of wake-ups per record at low rates — so more
// partitions than cores buy nothing there. On this project's 2-core
// machine, 1:1 at 2,000 msg/s: ack p99 median 12.9 ms with 8, 10.0 ms
// with 4, 10.9 ms with 2 (README, Measured); the ceiling did not move.
// A data directory made with another count keeps it (the topic exists).
const DevPartitions = 4

// Start brings the stack up.
func Start(ctx context.Context, cfg Config) (_ *Stack, err error) {
	if cfg.DataDir == "" {
		return nil, errors.New("stack: DataDir is required")
	}
	if cfg.Region == "" {
		cfg.Region = "local"
	}
	if cfg.EdgeID == "" {
		cfg.EdgeID = "edge-1"
	}
	if cfg.WSAddr == "" {
		cfg.WSAddr = "127.0.0.1:0"
	}
	if cfg.WTAddr == "" {
		cfg.WTAddr = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	s := &Stack{cfg: cfg}
	defer func() {
		if err != nil {
			s.Shutdown(context.Background())
		}
	}()

	// Read-only integrity checks first, then the store (whose Open verifies
	// before it writes), then the broker: a damaged directory is refused
	// before anything in DataDir changes. The region's Start checks the
	// store against the bus (region/integrity.go).
	kafkaDir := filepath.Join(cfg.DataDir, "kafka")
	if len(cfg.KafkaBrokers) == 0 {
		if err := kafkabus.CheckEmbeddedData(kafkaDir); err != nil {
			return nil, fmt.Errorf("stack: embedded kafka: %w", err)
		}
	}
	// Assign s.Store only on success: a nil *Store in the interface would
	// be "closed" by Shutdown.
	if cfg.PostgresDSN != "" {
		st, err := pgstore.Open(ctx, cfg.PostgresDSN, pgstore.Options{Logger: cfg.Logger, Schema: cfg.PGSchema})
		if err != nil {
			return nil, fmt.Errorf("stack: store: %w", err)
		}
		s.Store, s.ends.Store = st, "postgres"
	} else {
		st, err := pebblestore.Open(filepath.Join(cfg.DataDir, "pebble"), pebblestore.Options{Logger: cfg.Logger})
		if err != nil {
			return nil, fmt.Errorf("stack: store: %w", err)
		}
		s.Store, s.ends.Store = st, "pebble"
	}

	brokers := cfg.KafkaBrokers
	s.ends.Kafka = "external"
	if len(brokers) == 0 {
		s.embedded, err = kafkabus.StartEmbedded(ctx, kafkabus.EmbeddedConfig{DataDir: kafkaDir, Logger: cfg.Logger})
		if err != nil {
			return nil, fmt.Errorf("stack: embedded kafka: %w", err)
		}
		brokers = s.embedded.Addrs()
		s.ends.Kafka = "embedded"
	}
	s.Bus, err = kafkabus.New(kafkabus.Config{Brokers: brokers, ClientID: "chatmesh-region-" + cfg.Region, Logger: cfg.Logger})
	if err != nil {
		return nil, fmt.Errorf("stack: kafka: %w", err)
	}
	s.EdgeBus, err = kafkabus.New(kafkabus.Config{Brokers: brokers, ClientID: "chatmesh-" + cfg.EdgeID, Logger: cfg.Logger})
	if err != nil {
		return nil, fmt.Errorf("stack: kafka: %w", err)
	}
	if cfg.Partitions <= 0 {
		cfg.Partitions = DevPartitions
	}
	rcfg := region.Config{
		Name: cfg.Region, IngressPartitions: cfg.Partitions, Logger: cfg.Logger, Notifier: cfg.Notifier,
	}
	names := region.NamesFor(cfg.Namespace)
	rcfg.IngressTopic, rcfg.PresenceTopic, rcfg.SequencerGroup = names.Ingress, names.Presence, names.SequencerGroup
	rcfg.DeadLetterTopic = names.DeadLetter
	if cfg.RegionConfig != nil {
		cfg.RegionConfig(&rcfg)
	}
	s.Region, err = region.New(rcfg, s.Store, s.Bus)
	if err != nil {
		return nil, err
	}
	if err := s.Region.Start(ctx); err != nil {
		return nil, fmt.Errorf("stack: region: %w", err)
	}

	key, err := LoadOrCreateEdgeKey(filepath.Join(cfg.DataDir, "edge.key"))
	if err != nil {
		return nil, err
	}
	var tlsConf *tls.Config
	var certHash []byte
	wt := cfg.WTAddr
	if wt == "-" {
		wt = ""
	} else {
		tlsConf, certHash, err = LoadOrCreateCert(filepath.Join(cfg.DataDir, "edge-cert.pem"), time.Now())
		if err != nil {
			return nil, err
		}
	}
	// No edge.Config.Ready here: one region has no other region to send
	// its clients to. Its Health only reports a stopped sequencer, and a
	// sequencer restart (backoff from 100 ms, then the consumer group's
	// join) would turn into closing every session and refusing every
	// reconnect until it is back, cutting reads that still work, while
	// the sends meanwhile wait in Kafka and are sequenced after the
	// restart. (At start-up it would not matter: Region.Start returns
	// once the sequencer consumes, and the edge starts serving.) The mesh
	// (mesh.go) and `chatmesh edge` in a mesh set it.
	ecfg := edge.Config{
		ID: cfg.EdgeID, Region: cfg.Region, Static: key,
		WSAddr: cfg.WSAddr, WTAddr: wt, TLSConfig: tlsConf, Logger: cfg.Logger,
		IngressTopic: rcfg.IngressTopic, PresenceTopic: rcfg.PresenceTopic,
	}
	if cfg.MaxConnsPerIP > 0 {
		ecfg.MaxConnsPerIP = cfg.MaxConnsPerIP
	}
	if cfg.EdgeConfig != nil {
		cfg.EdgeConfig(&ecfg)
	}
	s.Edge, err = edge.New(ecfg, s.Region.API(), s.EdgeBus)
	if err != nil {
		return nil, fmt.Errorf("stack: edge: %w", err)
	}
	if err := s.Edge.Start(ctx); err != nil {
		return nil, fmt.Errorf("stack: edge: %w", err)
	}
	s.ends.Region = cfg.Region
	s.ends.EdgeID = cfg.EdgeID
	s.ends.WS = s.Edge.WSURL()
	if wt != "" {
		s.ends.WT = s.Edge.WTURL()
		s.ends.CertHash = hex.EncodeToString(certHash)
	}
	s.ends.EdgeKey = hex.EncodeToString(key.Public)
	return s, nil
}

// Endpoints says where the stack listens.
func (s *Stack) Endpoints() Endpoints { return s.ends }

// WriteEndpoints writes the endpoints as JSON to DataDir/endpoints.json.
func (s *Stack) WriteEndpoints() (string, error) {
	b, err := json.MarshalIndent(s.ends, "", "  ")
	if err != nil {
		return "", err
	}
	p := filepath.Join(s.cfg.DataDir, "endpoints.json")
	return p, os.WriteFile(p, append(b, '\n'), 0o644)
}

// Shutdown stops everything, edge first. Idempotent.
func (s *Stack) Shutdown(ctx context.Context) error {
	s.once.Do(func() {
		var errs []error
		if s.Edge != nil {
			errs = append(errs, s.Edge.Shutdown(ctx))
		}
		if s.Region != nil {
			errs = append(errs, s.Region.Shutdown(ctx))
		}
		if s.EdgeBus != nil {
			errs = append(errs, s.EdgeBus.Close())
		}
		if s.Bus != nil {
			errs = append(errs, s.Bus.Close())
		}
		if s.Store != nil {
			errs = append(errs, s.Store.Close())
		}
		if s.embedded != nil {
			errs = append(errs, s.embedded.Close())
		}
		s.shutErr = errors.Join(errs...)
	})
	return s.shutErr
}

// LoadOrCreateEdgeKey returns the edge's Noise static key kept at path,
// creating it on first use.
func LoadOrCreateEdgeKey(path string) (noiseconn.Keypair, error) {
	if b, err := os.ReadFile(path); err == nil {
		priv, err := hex.DecodeString(string(trimSpace(b)))
		if err != nil || len(priv) != 32 {
			return noiseconn.Keypair{}, fmt.Errorf("stack: %s: malformed key", path)
		}
		pub, err := noiseconn.PublicKey(priv)
		if err != nil {
			return noiseconn.Keypair{}, fmt.Errorf("stack: %s: %w", path, err)
		}
		return noiseconn.Keypair{Private: priv, Public: pub}, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return noiseconn.Keypair{}, fmt.Errorf("stack: %w", err)
	}
	kp, err := noiseconn.GenerateKeypair(rand.Reader)
	if err != nil {
		return noiseconn.Keypair{}, err
	}
	if err := os.WriteFile(path, []byte(hex.EncodeToString(kp.Private)+"\n"), 0o600); err != nil {
		return noiseconn.Keypair{}, fmt.Errorf("stack: %w", err)
	}
	return kp, nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// LoadOrCreateCert keeps a self-signed ECDSA P-256 certificate valid for
// 13 days (WebTransport's serverCertificateHashes allows at most 14),
// replacing it when fewer than 2 days are left.
func LoadOrCreateCert(path string, now time.Time) (*tls.Config, []byte, error) {
	if b, err := os.ReadFile(path); err == nil {
		cert, err := tls.X509KeyPair(b, b)
		if err == nil && cert.Leaf != nil && now.Add(48*time.Hour).Before(cert.Leaf.NotAfter) {
			h := sha256.Sum256(cert.Certificate[0])
			return &tls.Config{Certificates: []tls.Certificate{cert}}, h[:], nil
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "chatmesh dev edge"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(13 * 24 * time.Hour),
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, ip := range []string{"127.0.0.1", "::1"} {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("stack: certificate: %w", err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	pemBytes := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})...)
	if err := os.WriteFile(path, pemBytes, 0o600); err != nil {
		return nil, nil, fmt.Errorf("stack: %w", err)
	}
	cert, err := tls.X509KeyPair(pemBytes, pemBytes)
	if err != nil {
		return nil, nil, err
	}
	h := sha256.Sum256(der)
	return &tls.Config{Certificates: []tls.Certificate{cert}}, h[:], nil
}
