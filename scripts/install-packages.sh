#!/usr/bin/env bash
# Install the Debian and npm packages that `make services` runs, when they are missing.
# Needs root (apt-get); does nothing when everything is already there.
set -euo pipefail

log() { printf 'install-packages: %s\n' "$*" >&2; }

debian_packages=(rabbitmq-server mariadb-server mariadb-client postfix prometheus prometheus-pushgateway curl)
missing=()
for package in "${debian_packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        log "missing Debian packages: ${missing[*]}; run this script as root or install them yourself"
        exit 1
    fi
    log "installing Debian packages: ${missing[*]}"
    # Postfix prompts for a configuration, but only its smtp-sink and smtp-source tools are used here.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # Keep the packages' own init scripts from starting system-wide servers on the default ports:
    # `make services` starts its own instances on loopback with their state under .run/.
    policy=/usr/sbin/policy-rc.d
    created_policy=no
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod +x "$policy"
        created_policy=yes
    fi
    apt_status=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
        || apt_status=$?
    if [ "$created_policy" = yes ]; then rm -f "$policy"; fi
    if [ "$apt_status" -ne 0 ]; then
        log "apt-get install failed with status $apt_status"
        exit "$apt_status"
    fi
fi

maildev_dir=${MAILPIPE_TOOLS_DIR:-$HOME/.cache/mailpipe/tools}/maildev-${MAILDEV_VERSION:-2.2.1}
if [ ! -x "$maildev_dir/node_modules/.bin/maildev" ]; then
    log "installing maildev into $maildev_dir"
    mkdir -p "$maildev_dir"
    npm install --prefix "$maildev_dir" --no-audit --no-fund --loglevel=error "maildev@${MAILDEV_VERSION:-2.2.1}"
fi
log "all packages present"
