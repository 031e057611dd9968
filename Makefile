# chatmesh — the two commands that matter are `make run` and `make test`.
SHELL := /bin/bash
GO ?= go

.PHONY: run build test test-unit fuzz bench soak generate vet clean

## run: start the whole mesh (one region) on its embedded default: kfake + Pebble
run:
	$(GO) run ./cmd/chatmesh dev --data .chatmesh/dev

build:
	$(GO) build -o bin/chatmesh ./cmd/chatmesh

## test: install/start PostgreSQL and a 3-broker Kafka, then run every test, then short fuzzing
test:
	./scripts/test.sh

## test-unit: the fast tests only (embedded broker and store; real servers skipped)
test-unit:
	$(GO) test ./...

## fuzz: run every fuzz target briefly (FUZZTIME=10s by default)
fuzz:
	./scripts/fuzz.sh

bench:
	$(GO) test -run '^$$' -bench . -benchtime 2s ./...

## soak: a 10-minute simulation, the region SIGKILLed every 20 s (not part of make test)
soak: build
	bin/chatmesh sim --duration 10m --crash-every 20s --clients 50 --groups 2 --group-size 20 --rate 50 --group-rate 5 -v

## generate: regenerate core/pb from proto/ (needs protoc; installs protoc-gen-go at the pinned version)
generate:
	./scripts/generate.sh

vet:
	gofmt -l . | (! grep .) && $(GO) vet ./...

clean:
	rm -rf bin .chatmesh
