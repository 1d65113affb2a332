# hybridrelay container image: `make image` (docker or podman).
#
# The build stage runs `make static`, the same target CI builds and checks
# (deploy/static_test.go): a CGO_ENABLED=0, statically linked binary, so the
# runtime stage needs no libc. The BPF object is embedded in the binary
# (bpf2go output is committed), so neither clang nor libbpf is needed here.
#
# The relay attaches an XDP program and pins BPF maps, which no unprivileged
# user can do; the image runs as root with only these capabilities (no
# privileged: true; see deploy/kubernetes/daemonset.yaml and
# docs/operations.md "Running in a container"):
#   CAP_BPF           load the program, create and pin maps
#   CAP_NET_ADMIN     attach XDP to interfaces, netlink route/neighbour queries
#   CAP_PERFMON       the verifier's pointer arithmetic rules for the program
#   CAP_SYS_RESOURCE  raise RLIMIT_MEMLOCK on kernels that still charge it
# plus CAP_NET_BIND_SERVICE only if a listener port is below 1024 (443).
# Without them `serve --datapath auto` falls back to gso and says why.

ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=""
ARG COMMIT=""
RUN make static VERSION="${VERSION}" COMMIT="${COMMIT}" && bin/hybridrelay-static version

FROM gcr.io/distroless/static-debian12
COPY --from=build /src/bin/hybridrelay-static /usr/local/bin/hybridrelay
COPY internal/config/default.conf /etc/hybridrelay/hybridrelay.conf
# STUN/TURN over UDP and TCP, TURN over TLS, metrics and probes.
EXPOSE 3478/udp 3478/tcp 5349/tcp 9641/tcp
USER 0:0
ENTRYPOINT ["/usr/local/bin/hybridrelay"]
CMD ["serve", "--config", "/etc/hybridrelay/hybridrelay.conf"]
