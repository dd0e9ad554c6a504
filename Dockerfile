# Multi-stage build of the agent image. The builder installs what `cargo xtask setup` needs
# (the nightly toolchain with rust-src, bpf-linker against its LLVM) and builds the release
# binary with the eBPF programs embedded; the final image holds only that binary.
FROM rust:1.95-bookworm AS build
RUN rustup toolchain install nightly --profile minimal --component rust-src
WORKDIR /src
COPY . .
RUN cargo xtask build --release

FROM debian:bookworm-slim
COPY --from=build /src/target/release/trident-ports-agent /usr/local/bin/trident-ports-agent
ENTRYPOINT ["/usr/local/bin/trident-ports-agent"]
CMD ["run", "--config=/etc/trident-ports/node.yaml"]
