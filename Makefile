# circuit's Makefile stays thin: the work is in hack/.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
PREFIX  ?= /usr/local
export CGO_ENABLED := 0
export GOFLAGS := -mod=mod

.PHONY: all build cni install deps test unit vmtest fuzz demo bench clean

all: build cni

# circuit (runc's hook and the CLI) and circuit-agent (the node agent that
# holds etcd's client; circuit never links it).
build:
	go build -trimpath -ldflags '$(LDFLAGS)' -o bin/circuit .
	go build -trimpath -ldflags '$(LDFLAGS)' -o bin/circuit-agent ./circuit-agent

# The CNI plugins pinned in hack/cni/go.mod (their own module, so their
# libcni does not choose circuit's), for the tests and the demo.
cni:
	cd hack/cni && go build -trimpath -o ../../bin/cni/ tool

install: build
	install -D -m 0755 bin/circuit $(DESTDIR)$(PREFIX)/bin/circuit
	install -D -m 0755 bin/circuit-agent $(DESTDIR)$(PREFIX)/bin/circuit-agent

deps:
	hack/deps.sh

# Every tier this machine can run: unit, root (host kernel), fuzz, VM.
test: deps build cni
	hack/test.sh

unit:
	CGO_ENABLED=1 go test -race ./...

fuzz:
	hack/fuzz.sh

vmtest: deps
	hack/vmtest.sh

demo: deps build cni
	hack/demo.sh

# Measures circuit against the plugins, plain runc and a full nftables
# rewrite, and circuit-agent on simulated nodes, and rewrites
# docs/benchmarks.md (hack/bench). Root; takes 18 min or more.
# hack/bench is its own module: its plotting libraries stay out of circuit's.
bench: deps build cni
	cd hack/bench && go build -o ../../bin/bench .
	bin/bench -out docs/benchmarks.md

clean:
	rm -rf bin
