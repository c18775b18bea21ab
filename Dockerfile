# lb, backend and loadgen as static binaries in an image FROM scratch.
#   docker build -t lb:latest .      (or: docker-compose build)
#   docker run --rm -p 8080:8080 --security-opt seccomp=deploy/seccomp-io_uring.json \
#     lb:latest --config /etc/lb/lb.toml --backend 10.0.0.1:80
# Without registry access (no rust:1-bookworm to pull), scripts/host-image builds the final stage
# below from static binaries built on the host. See deploy/README.md.

FROM rust:1-bookworm AS builder
WORKDIR /src
# Static glibc: the final image has no libc. glibc >= 2.34 has the `files` and `dns` NSS
# modules built in, so name resolution (lb's discover = true) works without any .so.
# --target keeps RUSTFLAGS off build scripts and proc macros, which cannot be static.
ENV RUSTFLAGS="-C target-feature=+crt-static" \
    CARGO_TERM_COLOR=never
COPY Cargo.toml Cargo.lock ./
COPY common common
COPY lb lb
COPY backend backend
COPY loadgen loadgen
RUN cargo build --release --locked --bins --target x86_64-unknown-linux-gnu \
 && mkdir -p /out/bin /out/tmp \
 && cp target/x86_64-unknown-linux-gnu/release/lb \
       target/x86_64-unknown-linux-gnu/release/backend \
       target/x86_64-unknown-linux-gnu/release/loadgen /out/bin/ \
 && chmod 1777 /out/tmp
# Fails the build if a binary needs a shared library (it would not start FROM scratch).
RUN for b in /out/bin/*; do \
      if readelf -d "$b" | grep -q NEEDED; then echo "$b is not static"; readelf -d "$b"; exit 1; fi; \
    done

FROM scratch
COPY --from=builder /out/bin/lb /lb
COPY --from=builder /out/bin/backend /backend
COPY --from=builder /out/bin/loadgen /loadgen
# $TMPDIR for lb's upgrade socket (lb-upgrade-PORT.sock).
COPY --from=builder /out/tmp /tmp
COPY deploy/lb-compose.toml /etc/lb/lb.toml
ENV RUST_LOG=info
EXPOSE 8080 9900 9001
# No HEALTHCHECK here: the image runs lb, backend or loadgen; docker-compose.yml sets one per
# service (/loadgen against the admin or backend /health: there is no shell or curl).
ENTRYPOINT ["/lb"]
CMD ["--config", "/etc/lb/lb.toml"]
