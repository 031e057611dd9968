package vectors

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/chatmesh/chatmesh/crypto/identity"
	"github.com/chatmesh/chatmesh/crypto/pqxdh"
	"github.com/chatmesh/chatmesh/crypto/prekey"
	"github.com/chatmesh/chatmesh/crypto/ratchet"
	"github.com/chatmesh/chatmesh/crypto/safety"
	"github.com/chatmesh/chatmesh/crypto/senderkey"
)

// TestSpecText ties E2E.md to the code: every label the independent model
// uses (and so the vectors prove) is named in E2E.md, and the constants
// table states the packages' sizes and limits.
func TestSpecText(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "E2E.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	labels := map[string]bool{}
	for _, f := range []string{"model_test.go", "generate_test.go"} {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile(`"(chatmesh-[a-z0-9 -]+)"`).FindAllStringSubmatch(string(src), -1) {
			labels[m[1]] = true
		}
	}
	delete(labels, "chatmesh-group-v1") // the group id rule is PROTOCOL.md §7.5's
	if len(labels) < 12 {
		t.Fatalf("found only %d labels in the model", len(labels))
	}
	for l := range labels {
		if !strings.Contains(doc, "`"+l+"`") && !strings.Contains(doc, `"`+l+`"`) {
			t.Errorf("E2E.md does not name the label %q the model uses", l)
		}
	}
	rows := []string{
		fmt.Sprintf("| identity public / private encoding | %d / %d bytes, version 1 |", identity.PublicSize, identity.PrivateSize),
		fmt.Sprintf("| Noise protocol | `%s`, PSK at position 1 |", pqxdh.ProtocolName),
		fmt.Sprintf("| initial message version byte / header / Noise message / handshake | `0x50` / %d / %d / %d bytes |",
			pqxdh.HandshakeSize-(32+48+identity.PublicSize+16), 32+48+identity.PublicSize+16, pqxdh.HandshakeSize),
		fmt.Sprintf("| ratchet message version / header / overhead | `0x01` / %d / %d bytes |", ratchet.HeaderSize, ratchet.Overhead),
		fmt.Sprintf("| ratchet MaxSkip per chain / stored skipped keys | %d / %d (oldest evicted) |", ratchet.DefaultMaxSkip, ratchet.DefaultMaxSkippedTotal),
		fmt.Sprintf("| session associated data | the 32-byte handshake hash (max accepted %d) |", ratchet.MaxAssociatedData),
		fmt.Sprintf("| sender key distribution / message header / overhead | %d / 9 / %d bytes, version `0x01` |", senderkey.DistributionSize, senderkey.Overhead),
		fmt.Sprintf("| sender key MaxSkip / stored skipped keys | %d / %d (oldest evicted) |", senderkey.DefaultMaxSkip, senderkey.DefaultMaxSkipped),
		fmt.Sprintf("| signed prekey / KEM prekey / one-time prekey | %d / %d / %d bytes |", prekey.SignedPrekeySize, prekey.KEMPrekeySize, prekey.OneTimePrekeySize),
		fmt.Sprintf("| one-time prekeys per upload | ≤ %d |", prekey.MaxOneTimePerUpload),
		fmt.Sprintf("| devices per device list | 1..%d (the server allows 16 per user) |", identity.MaxDevices),
		fmt.Sprintf("| replay tokens per signed prekey | %d, then the SPK must rotate |", pqxdh.DefaultMaxTokensPerSignedPrekey),
		fmt.Sprintf("| safety numbers | version %d, %d × SHA-512, 60 digits; scannable version 1, %d bytes |", safety.FingerprintVersion, safety.Iterations, safety.ScannableSize),
	}
	// The quick checks of E2E.md §11 are the committed vectors' values.
	vb, err := os.ReadFile(File)
	if err != nil {
		t.Fatal(err)
	}
	var v Vectors
	if err := json.Unmarshal(vb, &v); err != nil {
		t.Fatal(err)
	}
	rows = append(rows,
		fmt.Sprintf("handshake hash (setup.handshake_hash)   %x", v.Setup.HandshakeHash),
		fmt.Sprintf("root key SK (setup.root_key)            %x", v.Setup.RootKey),
		fmt.Sprintf("message 0 wire length                   %d bytes (%d handshake + %d header + %d body + 16 tag)",
			len(v.Messages[0].Wire), pqxdh.HandshakeSize, ratchet.HeaderSize, len(v.Messages[0].Plaintext)),
		fmt.Sprintf("safety number                           %s", v.Safety.Digits))
	for _, r := range rows {
		if !strings.Contains(doc, r) {
			t.Errorf("E2E.md lacks the line\n%s", r)
		}
	}
}
