package pqxdh

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/flynn/noise"
	"golang.org/x/crypto/curve25519"
)

// vectorsPath is the cacophony vectors file (testdata), overridable with
// CHATMESH_NOISE_VECTORS (e.g. the full cacophony.txt).
func vectorsPath() string {
	if p := os.Getenv("CHATMESH_NOISE_VECTORS"); p != "" {
		return p
	}
	// The Xpsk1/25519/ChaChaPoly/SHA256 vectors of cacophony.txt (public
	// domain), copied so the test needs nothing outside the repository.
	return filepath.Join("testdata", "cacophony.json")
}

type hexBytes []byte

func (h *hexBytes) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := hex.DecodeString(s)
	*h = v
	return err
}

type vector struct {
	ProtocolName     string     `json:"protocol_name"`
	InitPrologue     hexBytes   `json:"init_prologue"`
	InitPSKs         []hexBytes `json:"init_psks"`
	InitStatic       hexBytes   `json:"init_static"`
	InitEphemeral    hexBytes   `json:"init_ephemeral"`
	InitRemoteStatic hexBytes   `json:"init_remote_static"`
	RespPrologue     hexBytes   `json:"resp_prologue"`
	RespPSKs         []hexBytes `json:"resp_psks"`
	RespStatic       hexBytes   `json:"resp_static"`
	HandshakeHash    hexBytes   `json:"handshake_hash"`
	Messages         []struct {
		Payload    hexBytes `json:"payload"`
		Ciphertext hexBytes `json:"ciphertext"`
	} `json:"messages"`
}

func keypair(t *testing.T, priv []byte) noise.DHKey {
	t.Helper()
	pub, err := curve25519.X25519(priv, curve25519.Basepoint)
	if err != nil {
		t.Fatal(err)
	}
	return noise.DHKey{Private: priv, Public: pub}
}

// TestNoiseVectors drives the exact Noise configuration the handshake uses
// (handshakeConfig: pattern X, psk at position 1, 25519/ChaChaPoly/SHA-256)
// with the cacophony vectors' fixed keys, ephemerals, prologues and PSKs and
// requires byte-identical handshake and transport ciphertexts and handshake
// hash, on both the initiator and the responder side.
func TestNoiseVectors(t *testing.T) {
	raw, err := os.ReadFile(vectorsPath())
	if err != nil {
		t.Fatalf("noise vectors: %v (set CHATMESH_NOISE_VECTORS)", err)
	}
	var file struct {
		Vectors []vector `json:"vectors"`
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	matched := 0
	for _, v := range file.Vectors {
		if v.ProtocolName != ProtocolName {
			continue
		}
		matched++
		t.Run(v.ProtocolName, func(t *testing.T) {
			if len(v.InitPSKs) != 1 || len(v.RespPSKs) != 1 {
				t.Fatalf("want one psk each, got %d/%d", len(v.InitPSKs), len(v.RespPSKs))
			}
			ini, err := noise.NewHandshakeState(handshakeConfig(true, v.InitPrologue, v.InitPSKs[0],
				keypair(t, v.InitStatic), v.InitRemoteStatic, bytes.NewReader(v.InitEphemeral)))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := noise.NewHandshakeState(handshakeConfig(false, v.RespPrologue, v.RespPSKs[0],
				keypair(t, v.RespStatic), nil, nil))
			if err != nil {
				t.Fatal(err)
			}
			m0 := v.Messages[0]
			ct, send, _, err := ini.WriteMessage(nil, m0.Payload)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(ct, m0.Ciphertext) {
				t.Fatalf("handshake ciphertext\n got %x\nwant %x", ct, m0.Ciphertext)
			}
			pt, recv, _, err := resp.ReadMessage(nil, ct)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(pt, m0.Payload) {
				t.Fatalf("responder payload %x, want %x", pt, m0.Payload)
			}
			if send == nil || recv == nil {
				t.Fatal("one-way handshake did not complete in one message")
			}
			if !bytes.Equal(ini.ChannelBinding(), v.HandshakeHash) || !bytes.Equal(resp.ChannelBinding(), v.HandshakeHash) {
				t.Fatalf("handshake hash\n got %x / %x\nwant %x", ini.ChannelBinding(), resp.ChannelBinding(), v.HandshakeHash)
			}
			if !bytes.Equal(resp.PeerStatic(), keypair(t, v.InitStatic).Public) {
				t.Fatal("responder did not learn the initiator static key")
			}
			// One-way pattern: every transport message goes initiator → responder.
			for i, m := range v.Messages[1:] {
				ct, err := send.Encrypt(nil, nil, m.Payload)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(ct, m.Ciphertext) {
					t.Fatalf("transport message %d\n got %x\nwant %x", i+1, ct, m.Ciphertext)
				}
				pt, err := recv.Decrypt(nil, nil, ct)
				if err != nil || !bytes.Equal(pt, m.Payload) {
					t.Fatalf("transport message %d: decrypt %x, %v", i+1, pt, err)
				}
			}
		})
	}
	if matched == 0 {
		t.Fatalf("no vector for %s in %s", ProtocolName, vectorsPath())
	}
}
