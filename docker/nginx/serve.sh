#!/bin/sh
# The front door image's entry point: render.sh's config into /tmp (the root filesystem is
# read-only), then nginx in the foreground. FRONTDOOR_KEY_FILE (docker compose: TorchServe's
# key_file.json on their shared volume) makes TorchServe's inference key the one clients send,
# read at start and again whenever TorchServe writes new keys (its container restarted): nginx
# reloads the new config without dropping a connection. Its other keys are answered 403.
# Admission per model (FRONTDOOR_MODEL_LIMITS, render.sh), unless set: what the serving process
# beside it says at TORCHSERVE_READY's /admission (the models a container serves are its to know).
set -eu
conf=${FRONTDOOR_CONF:-/tmp/nginx.conf}
render_sh=${FRONTDOOR_RENDER:-/etc/nginx/render.sh}
template=${FRONTDOOR_TEMPLATE:-/etc/nginx/nginx.conf.template}

render() {
    if [ -n "${FRONTDOOR_KEY_FILE:-}" ]; then
        FRONTDOOR_KEY=$(jq -er '.inference.key' "$FRONTDOOR_KEY_FILE") || return 1
        FRONTDOOR_OTHER_KEYS=$(jq -r '[to_entries[] | select(.key != "inference") | .value.key]
                                      | join(" ")' "$FRONTDOOR_KEY_FILE") || return 1
        export FRONTDOOR_KEY FRONTDOOR_OTHER_KEYS
    fi
    sh "$render_sh" "$template" > "$conf.new" && mv "$conf.new" "$conf"
}

keys_version() { cksum "$FRONTDOOR_KEY_FILE" 2>/dev/null || echo none; }

if [ -n "${FRONTDOOR_KEY_FILE:-}" ]; then
    waited=0
    until [ -s "$FRONTDOOR_KEY_FILE" ]; do
        [ "$waited" -lt 120 ] || { echo "no key file at $FRONTDOOR_KEY_FILE after 120 s" >&2; exit 1; }
        sleep 1; waited=$((waited + 1))
    done
fi
if [ -z "${FRONTDOOR_MODEL_LIMITS:-}" ] && [ -n "${TORCHSERVE_READY:-}" ]; then
    waited=0
    until FRONTDOOR_MODEL_LIMITS=$(curl -fsS --max-time 2 "http://$TORCHSERVE_READY/admission" |
            jq -er '.models | to_entries | map("\(.key)=\(.value)") | join(" ")'); do
        if [ "$waited" -ge 60 ]; then
            echo "no admission limits from $TORCHSERVE_READY/admission after 60 s: none set" >&2
            FRONTDOOR_MODEL_LIMITS=""
            break
        fi
        sleep 1; waited=$((waited + 1))
    done
    export FRONTDOOR_MODEL_LIMITS
fi
render
nginx -c "$conf" -e stderr -g 'daemon off;' &
nginx=$!
# SIGQUIT (the image's stop signal) is nginx's graceful stop: passed on, then waited for.
trap 'kill -QUIT "$nginx" 2>/dev/null; wait "$nginx"; exit 0' QUIT TERM INT
if [ -n "${FRONTDOOR_KEY_FILE:-}" ]; then
    seen=$(keys_version)
    while kill -0 "$nginx" 2>/dev/null; do
        sleep 2 & wait $!
        now=$(keys_version)
        if [ "$now" != "$seen" ] && [ "$now" != none ] && render; then
            echo "TorchServe wrote new keys: config reloaded" >&2
            kill -HUP "$nginx"
            seen=$now
        fi
    done
fi
wait "$nginx"
