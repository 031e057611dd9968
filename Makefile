# chatmesh — the two commands that matter are `make run` and `make test`.
SHELL := /bin/bash
GO ?= go

.PHONY: run build test test-unit fuzz bench bench-compare soak soak-one-region generate vet clean

## run: start the whole mesh (three regions in one process) on its embedded default: kfake + Pebble
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

## bench-compare: chatmesh dev (1 region) vs Centrifugo v6.9.1 (memory engine), cheap clients, ratio table
## (builds Centrifugo once into ~/.cache/chatmesh/bench/bin; budgets: see scripts/bench-compare.sh)
bench-compare:
	./scripts/bench-compare.sh

## soak: 30 minutes of the three-region simulator, seed after seed (PostgreSQL from Debian; not part of make test)
## SOAK=30m SEED=1 override the budget and the first seed; reports go to .chatmesh/soak/seed-N/
SOAK ?= 30m
SEED ?= 1
soak: build
	CHATMESH_PG_DSN="$$(./deploy/postgres/ensure.sh | tail -1)" bin/chatmesh sim --regions 3 --soak $(SOAK) --seed $(SEED) \
		--duration 2m --clients 16 --groups 2 --group-size 10 --report .chatmesh/soak

## soak-one-region: a 10-minute single-region simulation, the region SIGKILLed every 20 s
soak-one-region: build
	bin/chatmesh sim --regions 1 --duration 10m --crash-every 20s --clients 50 --groups 2 --group-size 20 --rate 50 --group-rate 5 -v

## generate: regenerate core/pb from proto/ (needs protoc; installs protoc-gen-go at the pinned version)
generate:
	./scripts/generate.sh

vet:
	gofmt -l . | (! grep .) && $(GO) vet ./...

clean:
	rm -rf bin .chatmesh
