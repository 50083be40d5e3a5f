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
export TORCHSERVE_SERVERS FRONTDOOR_PORT FRONTDOOR_AUTH
envsubst '${TORCHSERVE_SERVERS} ${FRONTDOOR_PORT} ${FRONTDOOR_AUTH}' < "$template"
