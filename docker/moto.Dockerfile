# moto's S3 server at the project's pinned version, for engines that cannot pull motoserver/moto.
# Wheels come in the context (wheels/, downloaded on the host with constraints.txt), so the build
# needs only Debian's python3. Same entrypoint as the official image (/usr/local/bin/moto_server).
FROM baileys-resilience/debian:bookworm
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
ARG MOTO_VERSION
COPY wheels /tmp/wheels
RUN python3 -m venv /opt/moto \
 && /opt/moto/bin/pip install -q --no-index --find-links /tmp/wheels --disable-pip-version-check \
      "moto[server]==${MOTO_VERSION}" \
 && ln -s /opt/moto/bin/moto_server /usr/local/bin/moto_server \
 && rm -rf /tmp/wheels /root/.cache
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/moto_server"]
CMD ["-H", "0.0.0.0", "-p", "5000"]
