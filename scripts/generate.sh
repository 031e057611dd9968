#!/usr/bin/env bash
# Regenerates core/pb from proto/ with the pinned protoc-gen-go.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v protoc >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler
fi
ver=$(go list -m -f '{{.Version}}' google.golang.org/protobuf)
GOBIN="$PWD/bin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$ver"
PATH="$PWD/bin:$PATH" protoc --go_out=. --go_opt=module=github.com/chatmesh/chatmesh -I proto proto/chatmesh/v1/*.proto
echo "generated core/pb"
