# hybridrelay — see README.md. Every target works on a fresh Debian machine
# after .ci/run's package install (clang is needed only for `generate`).

GO        ?= go
BIN       := bin/hybridrelay
PKGS      := ./...
# Brief fuzzing for CI; `make fuzz FUZZTIME=5m` for real runs.
FUZZTIME  ?= 10s

# Version and commit stamped into the binary (hybridrelay version); outside
# a git checkout (the image build) they come from the caller or stay empty,
# and the binary falls back to Go's build information.
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null)
COMMIT    ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS   := -X main.buildVersion=$(VERSION) -X main.buildCommit=$(COMMIT)
IMAGE     ?= hybridrelay:$(or $(VERSION),dev)

.PHONY: all build static image test unit lint vet fmt-check generate check-generated run fuzz fuzz-brief bench bench-e2e bench-overload clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/hybridrelay

# The binary the container image ships (Dockerfile): no cgo, statically
# linked, paths trimmed. deploy/static_test.go builds it the same way and
# checks that it runs `--version`.
static:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w $(LDFLAGS)" -o bin/hybridrelay-static ./cmd/hybridrelay

# Builds the container image with docker, or podman when docker is absent
# or its daemon does not answer.
image:
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
		docker build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) -t $(IMAGE) .; \
	elif command -v podman >/dev/null 2>&1; then \
		podman build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) -t $(IMAGE) .; \
	else \
		echo "make image: needs docker (with a running daemon) or podman; neither is usable here." >&2; \
		echo "  The image's binary is 'make static' (CGO_ENABLED=0); see Dockerfile." >&2; \
		exit 1; \
	fi

# The README's test command. Privileged tests run when root; with
# HYBRIDRELAY_REQUIRE_PRIV=1 (CI) a missing privilege fails instead of skipping.
test: lint check-generated unit fuzz-brief

unit:
	$(GO) test -count=1 -timeout 15m $(PKGS)

lint: vet fmt-check

vet:
	$(GO) vet $(PKGS)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# Regenerates the bpf2go output (needs clang and libbpf headers).
generate:
	$(GO) generate ./pkg/loader/...

# When clang is present, the committed bpf2go output must match the C source.
check-generated:
	@if command -v clang >/dev/null 2>&1 && [ -d pkg/loader ] && grep -rqs 'go:generate' pkg/loader; then \
		tools/check-generated.sh; \
	else echo "check-generated: clang or generate directives absent, skipped"; fi

# Runs the relay on the embedded default configuration.
run: build
	./$(BIN) serve

fuzz-brief:
	@tools/fuzz.sh $(FUZZTIME)

fuzz:
	@tools/fuzz.sh $(if $(filter 10s,$(FUZZTIME)),5m,$(FUZZTIME))

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 5 $(PKGS)

# The network-namespace benchmark (root, ~45 min): xdp, gso, plain and the
# direct path, alternating and repeated; see tools/bench-e2e.sh for knobs.
bench-e2e: build
	tools/bench-e2e.sh $(BIN)

# Media latency through a flooded relay (root, ~2 min): gso without and
# with max-queue-delay, and xdp, alternated 7 times; medians reported.
bench-overload:
	HYBRIDRELAY_OVERLOAD_REPEATS=7 $(GO) test -count=1 -run '^TestOverloadLatencyBounded$$' -v ./internal/xdpe2e/

clean:
	rm -rf bin
