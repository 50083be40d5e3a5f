#!/bin/sh
# The front door's nginx config, on stdout, from its template (docker/nginx/nginx.conf):
#   TORCHSERVE_INFERENCE  host:port of TorchServe's inference API; several (space-separated) are
#                         balanced by least connections: the multi-instance run on one machine
#   FRONTDOOR_PORT        where nginx listens
#   FRONTDOOR_KEY         when set, /predictions/ needs "Authorization: Bearer <key>" and nginx
#                         checks it. A Kubernetes pod: TorchServe makes new keys at every start,
#                         so replicas behind one Service cannot share them; there TorchServe listens
#                         on the pod's loopback with its token check off and this key (a Secret,
#                         the same for every replica) is checked here instead.
#   FRONTDOOR_MAX_REQUESTS  requests to the models in flight at once through this nginx (default
#                         256); more are answered 429. Bodies over 1 MB wait in /tmp while they
#                         arrive, so /tmp needs this many times the 10 MB body limit: a pod's
#                         volume for /tmp is sized from it (serving/deploy.py)
#   TORCHSERVE_READY      host:port of `serving serve`'s readiness endpoint (SERVING_READY_PORT):
#                         GET /ready is passed to it, for the kubelet's probes, the Open
#                         Inference Protocol's GET /v2/health/ready and KServe v1's GET /v1/models
#                         and /v1/models/<model>; unset, /v2/health/ready is TorchServe's /ping
set -eu
template=${1:-/etc/nginx/nginx.conf.template}
: "${TORCHSERVE_INFERENCE:?host:port of TorchServe's inference API}" "${FRONTDOOR_PORT:=8080}"
TORCHSERVE_SERVERS=""
for server in $TORCHSERVE_INFERENCE; do
    TORCHSERVE_SERVERS="${TORCHSERVE_SERVERS}server ${server}; "
done
FRONTDOOR_AUTH=""
if [ -n "${FRONTDOOR_KEY:-}" ]; then
    case "$FRONTDOOR_KEY" in
        *[!A-Za-z0-9_-]*) echo "FRONTDOOR_KEY: letters, digits, - and _ only" >&2; exit 1 ;;
    esac
    if [ "${#FRONTDOOR_KEY}" -lt 16 ]; then
        echo "FRONTDOOR_KEY: at least 16 characters (openssl rand -hex 32)" >&2; exit 1
    fi
    FRONTDOOR_AUTH="if (\$http_authorization != \"Bearer ${FRONTDOOR_KEY}\") { return 401; }"
fi
: "${FRONTDOOR_MAX_REQUESTS:=256}"
case "$FRONTDOOR_MAX_REQUESTS" in
    ''|*[!0-9]*) echo "FRONTDOOR_MAX_REQUESTS: a whole number" >&2; exit 1 ;;
esac
if [ -n "${TORCHSERVE_READY:-}" ]; then
    ready="limit_except GET { deny all; } proxy_pass http://${TORCHSERVE_READY}; proxy_connect_timeout 2s; proxy_read_timeout 5s;"
    FRONTDOOR_READY="location = /ready { $ready } location = /v2/health/ready { $ready } location = /v1/models { $ready } location ~ \"^/v1/models/[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\$\" { $ready }"
else  # the server's readiness: TorchServe's /ping
    FRONTDOOR_READY="location = /v2/health/ready { limit_except GET { deny all; } rewrite ^ /ping break; proxy_pass http://torchserve; proxy_set_header Connection \"\"; }"
fi
export TORCHSERVE_SERVERS FRONTDOOR_PORT FRONTDOOR_AUTH FRONTDOOR_MAX_REQUESTS FRONTDOOR_READY
envsubst '${TORCHSERVE_SERVERS} ${FRONTDOOR_PORT} ${FRONTDOOR_AUTH} ${FRONTDOOR_MAX_REQUESTS} ${FRONTDOOR_READY}' < "$template"
