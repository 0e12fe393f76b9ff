# The cluster agent as one static (musl) binary on an empty image: no shell, no package
# manager, no libc to patch, a numeric non-root user. Build from the repository root:
#
#   docker build -t datadog-cluster-agent:latest .
#
# The image holds the binary and the CA bundle the Datadog client trusts, nothing else.
# .ci/run builds the same static target with cargo (CI cannot pull base images) and checks
# that the binary has no interpreter and no shared-library dependency.

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
# The commit and its date are stamped from .git (build.rs); SOURCE_DATE_EPOCH overrides it.
RUN cargo build --release --locked --bin datadog-cluster-agent --target x86_64-unknown-linux-musl \
 && strip target/x86_64-unknown-linux-musl/release/datadog-cluster-agent \
 && install -D -m 0555 target/x86_64-unknown-linux-musl/release/datadog-cluster-agent \
      /out/usr/bin/datadog-cluster-agent \
 && install -D -m 0444 /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/ca-certificates.crt

FROM scratch
COPY --from=build /out/ /
# Numeric, so runAsNonRoot can verify it without a passwd file.
USER 10001:10001
# node-agent API, external metrics API, /metrics and /debug/vars, health probes
EXPOSE 5005 8443 5000 5556
ENTRYPOINT ["/usr/bin/datadog-cluster-agent"]
CMD ["start"]
