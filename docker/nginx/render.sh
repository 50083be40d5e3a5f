#!/bin/sh
# The front door's nginx config, on stdout, from its template (docker/nginx/nginx.conf):
#   TORCHSERVE_INFERENCE  host:port of TorchServe's inference API; several (space-separated) are
#                         balanced by least connections: the multi-instance run on one machine
#   FRONTDOOR_PORT        where nginx listens
#   FRONTDOOR_KEY         when set, every route to a model needs "Authorization: Bearer <key>":
#                         nginx answers a missing or wrong key 401 in JSON (TorchServe would say
#                         400 InvalidKeyException). `make up` and compose: TorchServe's inference
#                         key, which TorchServe checks again behind. A Kubernetes pod: TorchServe
#                         makes new keys at every start, so replicas behind one Service cannot
#                         share them; there TorchServe listens on the pod's loopback with its token
#                         check off and this key (a Secret, the same for every replica) is checked
#                         here instead. /ping and the readiness routes need no key: nginx sends
#                         it on to TorchServe itself
#   FRONTDOOR_OTHER_KEYS  keys of other APIs (TorchServe's management and token keys): sent for
#                         inference they are answered 403 in JSON, not 401
#   FRONTDOOR_MAX_REQUESTS  requests to the models in flight at once through this nginx (default
#                         256); more are answered 429. Bodies over 1 MB wait in /tmp while they
#                         arrive, so /tmp needs this many times the 10 MB body limit: a pod's
#                         volume for /tmp is sized from it (serving/scale/deploy.py)
#   FRONTDOOR_MODEL_LIMITS  admission per model: "digits=64 efficientnet_lite0=16" (serving/run/frontdoor.py,
#                         admission_limit: two full batches per worker). Past its limit a model's
#                         request is answered 503 {"error": "busy"} with Retry-After at once, by
#                         nginx, instead of queueing behind the others; models not named have none
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
FRONTDOOR_AUTH=""           # in each location to a model
FRONTDOOR_KEYS="default 0;"  # the map from the Authorization header to a refusal
FRONTDOOR_UPSTREAM_AUTH=""  # the key nginx sends itself where clients need none
check_key() {
    case "$1" in
        *[!A-Za-z0-9_-]*) echo "$2: letters, digits, - and _ only" >&2; exit 1 ;;
    esac
    # 8: TorchServe's own keys (62^8 guesses; make one for a pod with openssl rand -hex 32).
    if [ "${#1}" -lt 8 ]; then
        echo "$2: at least 8 characters (openssl rand -hex 32)" >&2; exit 1
    fi
}
if [ -n "${FRONTDOOR_KEY:-}" ]; then
    check_key "$FRONTDOOR_KEY" FRONTDOOR_KEY
    FRONTDOOR_KEYS="default 401; \"Bearer ${FRONTDOOR_KEY}\" 0;"
    for other in ${FRONTDOOR_OTHER_KEYS:-}; do
        check_key "$other" FRONTDOOR_OTHER_KEYS
        FRONTDOOR_KEYS="${FRONTDOOR_KEYS} \"Bearer ${other}\" 403;"
    done
    FRONTDOOR_AUTH="if (\$key_refused = 401) { return 401; } if (\$key_refused = 403) { return 403 '{\"error\": \"forbidden\", \"detail\": \"that key is for another API; send the inference key\"}'; }"
    FRONTDOOR_UPSTREAM_AUTH="proxy_set_header Authorization \"Bearer ${FRONTDOOR_KEY}\";"
fi
: "${FRONTDOOR_MAX_REQUESTS:=256}"
case "$FRONTDOOR_MAX_REQUESTS" in
    ''|*[!0-9]*) echo "FRONTDOOR_MAX_REQUESTS: a whole number" >&2; exit 1 ;;
esac
# Per model: one limit_conn zone per distinct limit, keyed by the model's name for the models
# with that limit and by "" (not counted) for the others.
FRONTDOOR_ADMISSION_ZONES=""
FRONTDOOR_ADMISSION=""
for limit in $(for entry in ${FRONTDOOR_MODEL_LIMITS:-}; do echo "${entry#*=}"; done | sort -un); do
    case "$limit" in
        ''|*[!0-9]*|0) echo "FRONTDOOR_MODEL_LIMITS: model=count, count a whole number > 0" >&2; exit 1 ;;
    esac
    names=""
    for entry in ${FRONTDOOR_MODEL_LIMITS}; do
        model=${entry%%=*}
        case "$model" in
            ''|*[!A-Za-z0-9_.-]*) echo "FRONTDOOR_MODEL_LIMITS: bad model name '$model'" >&2; exit 1 ;;
        esac
        [ "${entry#*=}" = "$limit" ] && names="$names \"$model\" \$request_model;"
    done
    FRONTDOOR_ADMISSION_ZONES="$FRONTDOOR_ADMISSION_ZONES map \$request_model \$admitted_$limit { default \"\";$names } limit_conn_zone \$admitted_$limit zone=model_$limit:1m;"
    FRONTDOOR_ADMISSION="$FRONTDOOR_ADMISSION limit_conn model_$limit $limit;"
done
if [ -n "${TORCHSERVE_READY:-}" ]; then
    ready="limit_except GET { deny all; } proxy_pass http://${TORCHSERVE_READY}; proxy_connect_timeout 2s; proxy_read_timeout 5s;"
    FRONTDOOR_READY="location = /ready { $ready } location = /v2/health/ready { $ready } location = /v1/models { $ready } location ~ \"^/v1/models/[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\$\" { $ready }"
else  # the server's readiness: TorchServe's /ping
    FRONTDOOR_READY="location = /v2/health/ready { limit_except GET { deny all; } rewrite ^ /ping break; proxy_pass http://torchserve; proxy_set_header Connection \"\"; ${FRONTDOOR_UPSTREAM_AUTH} }"
fi
export TORCHSERVE_SERVERS FRONTDOOR_PORT FRONTDOOR_AUTH FRONTDOOR_KEYS FRONTDOOR_UPSTREAM_AUTH \
    FRONTDOOR_MAX_REQUESTS FRONTDOOR_READY FRONTDOOR_ADMISSION_ZONES FRONTDOOR_ADMISSION
envsubst '${TORCHSERVE_SERVERS} ${FRONTDOOR_PORT} ${FRONTDOOR_AUTH} ${FRONTDOOR_KEYS} ${FRONTDOOR_UPSTREAM_AUTH} ${FRONTDOOR_MAX_REQUESTS} ${FRONTDOOR_READY} ${FRONTDOOR_ADMISSION_ZONES} ${FRONTDOOR_ADMISSION}' < "$template"
