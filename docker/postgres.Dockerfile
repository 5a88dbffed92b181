# PostgreSQL 15 from Debian's postgresql-15, for engines that cannot pull `postgres:15`
# (RESILIENCE_DOCKER_IMAGES=local, or auto when the registry refuses). The entrypoint
# (docker/postgres-entrypoint.sh) honours the official image's POSTGRES_USER, POSTGRES_PASSWORD
# and POSTGRES_DB, runs /docker-entrypoint-initdb.d/*.sql and *.sh once, and takes the port from
# PGPORT or `-p`. Built on the debootstrap base (resilience.drill.stack.images), context: the
# repository root, with `docker build --network host`.
FROM baileys-resilience/debian:bookworm

RUN mkdir -p /etc/postgresql-common/createcluster.d \
 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/no-main.conf \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql /docker-entrypoint-initdb.d \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
 && chmod 700 /var/lib/postgresql/data

COPY docker/postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
USER postgres
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
