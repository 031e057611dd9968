package kafkabus

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// ErrDamaged means the embedded broker's data directory is damaged: a
// segment file holds bytes that are not a valid record batch, records the
// broker had acknowledged are missing, or the directory lost its metadata.
// StartEmbedded refuses such a directory before kfake loads it (kfake
// itself would cut the damaged bytes off with one warning and run on).
var ErrDamaged = errors.New("kafkabus: embedded broker data damaged")

// embeddedRecovery is appended to every ErrDamaged refusal.
const embeddedRecovery = "the broker refuses to start rather than stall or silently skip conversations. " +
	"To recover: stop the process, move the data directory aside (keep it for inspection) and restore the whole " +
	"data directory (broker and store together) from a backup taken while the process was stopped; " +
	"to start over instead, remove the whole data directory and every client's state. " +
	"See deploy/README.md, section Damaged data"

// CheckEmbeddedData verifies kfake's on-disk layout in dir without
// changing it: every segment file (partitions/<topic>-<n>/<base>.dat) must
// be a sequence of whole record batches with valid CRCs, the last record
// must reach the high watermark the partition's snapshot.json recorded at
// the last clean shutdown, and segment data without meta.json is refused
// (kfake would ignore it and start an empty cluster). A directory that
// does not exist yet is fine. StartEmbedded runs it first; a caller that
// opens other data before the broker (internal/stack opens the store
// first) runs it before that, so that a refusal changes nothing anywhere.
//
// The layout is kfake's (persist.go of the pinned version): segment files
// hold Kafka v2 record batches back to back — base offset (8 bytes), batch
// length (4), leader epoch (4), magic (1), CRC-32C (4) of everything after
// it, attributes (2), last offset delta (4), ...
func CheckEmbeddedData(dir string) error {
	parts, err := filepath.Glob(filepath.Join(dir, "partitions", "*"))
	if err != nil {
		return fmt.Errorf("kafkabus: check embedded data %s: %w", dir, err)
	}
	haveData := false
	for _, pdir := range parts {
		n, err := checkPartitionDir(pdir)
		if err != nil {
			return err
		}
		haveData = haveData || n > 0
	}
	if _, err := os.Stat(filepath.Join(dir, "meta.json")); errors.Is(err, fs.ErrNotExist) && haveData {
		return fmt.Errorf("kafkabus: embedded broker %s: %w: meta.json is missing but partitions hold records; %s", dir, ErrDamaged, embeddedRecovery)
	}
	return nil
}

// checkPartitionDir checks one partition directory and returns how many
// record batches it holds.
func checkPartitionDir(pdir string) (int, error) {
	ents, err := os.ReadDir(pdir)
	if err != nil {
		return 0, fmt.Errorf("kafkabus: check embedded data %s: %w", pdir, err)
	}
	var bases []int64
	for _, e := range ents {
		if s, ok := strings.CutSuffix(e.Name(), ".dat"); ok {
			if b, err := strconv.ParseInt(s, 10, 64); err == nil {
				bases = append(bases, b)
			}
		}
	}
	slices.Sort(bases)
	batches := 0
	end := int64(-1) // one past the last record found
	for _, base := range bases {
		path := filepath.Join(pdir, strconv.FormatInt(base, 10)+".dat")
		raw, err := os.ReadFile(path)
		if err != nil {
			return 0, fmt.Errorf("kafkabus: check embedded data %s: %w", path, err)
		}
		pos := 0
		for pos+12 <= len(raw) {
			length := int(int32(binary.BigEndian.Uint32(raw[pos+8:])))
			size := 12 + length
			if length < 49 || pos+size > len(raw) { // 49: a v2 batch header after the length field
				break
			}
			b := raw[pos : pos+size]
			if binary.BigEndian.Uint32(b[17:]) != crc32.Checksum(b[21:], castagnoli) {
				break
			}
			first := int64(binary.BigEndian.Uint64(b))
			end = first + int64(int32(binary.BigEndian.Uint32(b[23:]))) + 1
			batches++
			pos += size
		}
		if pos < len(raw) {
			return 0, fmt.Errorf("kafkabus: embedded broker %s: %w: %d bytes from byte %d on are not a valid record batch (torn or corrupted; records from there on are lost); %s",
				path, ErrDamaged, len(raw)-pos, pos, embeddedRecovery)
		}
	}
	var snap struct {
		HighWatermark  int64 `json:"high_watermark"`
		LogStartOffset int64 `json:"log_start_offset"`
	}
	b, err := os.ReadFile(filepath.Join(pdir, "snapshot.json"))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return batches, nil
	case err != nil:
		return 0, fmt.Errorf("kafkabus: check embedded data %s: %w", pdir, err)
	}
	if err := json.Unmarshal(b, &snap); err != nil {
		return 0, fmt.Errorf("kafkabus: embedded broker %s: %w: snapshot.json does not parse: %v; %s", pdir, ErrDamaged, err, embeddedRecovery)
	}
	if end < 0 {
		end = snap.LogStartOffset // no records: everything before was deleted by retention
	}
	if snap.HighWatermark > end {
		return 0, fmt.Errorf("kafkabus: embedded broker %s: %w: the partition's records end at offset %d but it held records up to %d at its last clean shutdown (segment files truncated or deleted); %s",
			pdir, ErrDamaged, end, snap.HighWatermark, embeddedRecovery)
	}
	return batches, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)
