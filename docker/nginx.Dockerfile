# The front door: nginx from Debian's packages in front of TorchServe's inference API (see
# docker/nginx/nginx.conf for why). Runs as www-data on an unprivileged port.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends nginx curl gettext-base \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* \
    && mkdir -p /var/lib/nginx /var/log/nginx && chown -R www-data: /var/lib/nginx /var/log/nginx
COPY docker/nginx/nginx.conf /etc/nginx/nginx.conf.template
COPY docker/nginx/render.sh /etc/nginx/render.sh
USER www-data
EXPOSE 8080
# SIGQUIT is nginx's graceful stop: it stops accepting, finishes what it accepted, then exits.
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=5s --timeout=5s --retries=12 CMD ["sh", "-c", "curl -fs http://127.0.0.1:${FRONTDOOR_PORT}/nginx-health"]
# TORCHSERVE_INFERENCE, FRONTDOOR_PORT and FRONTDOOR_KEY (docker/nginx/render.sh) go into the
# config at start, into /tmp: the root filesystem is read-only.
ENV TORCHSERVE_INFERENCE=torchserve:8085 FRONTDOOR_PORT=8080
ENTRYPOINT ["sh", "-c", "sh /etc/nginx/render.sh > /tmp/nginx.conf && exec nginx -c /tmp/nginx.conf -g 'daemon off;'"]
