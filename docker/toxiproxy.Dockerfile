# Toxiproxy from the binary `./run` builds (.tools/bin/toxiproxy-server, the pinned version), for
# engines that cannot pull ghcr.io/shopify/toxiproxy. Same entrypoint as the official image
# (/toxiproxy). Context: the repository root.
FROM baileys-resilience/debian:bookworm
COPY .tools/bin/toxiproxy-server /toxiproxy
EXPOSE 8474
ENTRYPOINT ["/toxiproxy"]
CMD ["-host=0.0.0.0"]
