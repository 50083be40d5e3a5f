#!/bin/sh
# The front door image's entry point: render.sh's config into /tmp (the root filesystem is
# read-only), then nginx in the foreground. FRONTDOOR_KEY_FILE (docker compose: TorchServe's
# key_file.json on their shared volume) makes TorchServe's inference key the one clients send,
# read at start and again whenever TorchServe writes new keys (its container restarted): nginx
# reloads the new config without dropping a connection. Its other keys are answered 403.
set -eu
conf=/tmp/nginx.conf

render() {
    if [ -n "${FRONTDOOR_KEY_FILE:-}" ]; then
        FRONTDOOR_KEY=$(jq -er '.inference.key' "$FRONTDOOR_KEY_FILE") || return 1
        FRONTDOOR_OTHER_KEYS=$(jq -r '[to_entries[] | select(.key != "inference") | .value.key]
                                      | join(" ")' "$FRONTDOOR_KEY_FILE") || return 1
        export FRONTDOOR_KEY FRONTDOOR_OTHER_KEYS
    fi
    sh /etc/nginx/render.sh > "$conf.new" && mv "$conf.new" "$conf"
}

keys_version() { cksum "$FRONTDOOR_KEY_FILE" 2>/dev/null || echo none; }

if [ -n "${FRONTDOOR_KEY_FILE:-}" ]; then
    waited=0
    until [ -s "$FRONTDOOR_KEY_FILE" ]; do
        [ "$waited" -lt 120 ] || { echo "no key file at $FRONTDOOR_KEY_FILE after 120 s" >&2; exit 1; }
        sleep 1; waited=$((waited + 1))
    done
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
