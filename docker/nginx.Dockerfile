# The front door: nginx from Debian's packages in front of TorchServe's inference API (see
# docker/nginx/nginx.conf for why). Runs as www-data on an unprivileged port; compose runs it as
# TorchServe's uid instead, to read the key file TorchServe writes (docker/nginx/serve.sh).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# The bill of materials (/app/sbom/frontdoor.cdx.json): the Debian packages that read what clients
# send (nginx, and the libraries it parses with); docs/security.md reviews their versions.
ARG SBOM_PACKAGES="nginx nginx-common libssl3 libpcre2-8-0 zlib1g libc6"
RUN apt-get update && apt-get install -y --no-install-recommends nginx curl gettext-base jq \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* \
    && mkdir -p /var/lib/nginx /var/log/nginx && chown -R www-data: /var/lib/nginx /var/log/nginx \
    && mkdir -p /app/sbom \
    && dpkg-query -W -f '${Package}\t${Version}\n' $SBOM_PACKAGES | jq -Rn '{bomFormat: "CycloneDX", \
         specVersion: "1.6", version: 1, metadata: {component: {type: "application", \
         name: "model-serving-frontdoor", "bom-ref": "model-serving-frontdoor"}}, \
         components: [inputs | split("\t") | {type: "application", name: .[0], version: .[1], \
         "bom-ref": ("pkg:deb/debian/" + .[0] + "@" + .[1]), \
         purl: ("pkg:deb/debian/" + .[0] + "@" + .[1])}]}' > /app/sbom/frontdoor.cdx.json
COPY docker/nginx/nginx.conf /etc/nginx/nginx.conf.template
COPY docker/nginx/render.sh docker/nginx/serve.sh /etc/nginx/
USER www-data
EXPOSE 8080
# SIGQUIT is nginx's graceful stop: it stops accepting, finishes what it accepted, then exits.
STOPSIGNAL SIGQUIT
# FRONTDOOR_PORT is a port or address:port (127.0.0.1:8080 on the host's network).
HEALTHCHECK --interval=5s --timeout=5s --retries=12 CMD ["sh", "-c", "curl -fs http://127.0.0.1:${FRONTDOOR_PORT##*:}/nginx-health"]
# TORCHSERVE_INFERENCE, FRONTDOOR_PORT, FRONTDOOR_KEY or FRONTDOOR_KEY_FILE, ... (docker/nginx/
# render.sh and serve.sh) go into the config at start, into /tmp: the root filesystem is read-only.
ENV TORCHSERVE_INFERENCE=torchserve:8085 FRONTDOOR_PORT=8080
ENTRYPOINT ["sh", "/etc/nginx/serve.sh"]
