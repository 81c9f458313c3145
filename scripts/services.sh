#!/usr/bin/env bash
# Start, stop or report the local servers that the demo, the tests and the benchmark use, all on
# loopback, with their data and logs under $MAILPIPE_STATE_DIR (default: .run/ in the repository).
#
# Usage: scripts/services.sh start|stop|status [SERVICE ...]
# Services: mariadb rabbitmq ferretdb maildev smtp-sink prometheus pushgateway (default: all)
# Starting is idempotent: a service that already listens on its port is left alone.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=scripts/versions.sh
source "$here/versions.sh"
source "$here/ports.sh"

state_dir=${MAILPIPE_STATE_DIR:-$repo/.run}
tools_dir=${MAILPIPE_TOOLS_DIR:-$HOME/.cache/mailpipe/tools}
mkdir -p "$state_dir/logs" "$state_dir/pids"

log() { printf 'services: %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for NAME PORT SECONDS: wait until the port accepts connections, or fail with the log's tail.
wait_for() {
    local name=$1 port=$2 seconds=$3
    local deadline=$((SECONDS + seconds))
    while ! port_open "$port"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "$name did not open port $port within ${seconds}s; last lines of $state_dir/logs/$name.log:"
            tail -n 20 "$state_dir/logs/$name.log" >&2 || true
            return 1
        fi
        sleep 0.3
    done
}

# launch NAME COMMAND...: run a server in the background with its log and pid file.
launch() {
    local name=$1
    shift
    nohup "$@" >>"$state_dir/logs/$name.log" 2>&1 &
    echo $! >"$state_dir/pids/$name.pid"
}

start_mariadb() {
    port_open "$MARIADB_PORT" && { log "mariadb already listens on $MARIADB_PORT"; return; }
    local data=$state_dir/mariadb
    if [ ! -d "$data/mysql" ]; then
        log "initialising MariaDB data in $data"
        mkdir -p "$data"
        mariadb-install-db --no-defaults --datadir="$data" --user="$(id -un)" \
            --auth-root-authentication-method=socket --skip-test-db >>"$state_dir/logs/mariadb.log" 2>&1
    fi
    launch mariadb mariadbd --no-defaults --datadir="$data" --user="$(id -un)" \
        --bind-address=127.0.0.1 --port="$MARIADB_PORT" --socket="$data/mariadb.sock" \
        --pid-file="$data/mariadb.pid" --skip-log-bin --innodb-flush-log-at-trx-commit=2 \
        --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci --max-connections=500
    wait_for mariadb "$MARIADB_PORT" 60
    # The application user that the default MAILPIPE_MYSQL_URL names; tests make their own databases.
    mariadb --no-defaults --socket="$data/mariadb.sock" -u root <<SQL
CREATE USER IF NOT EXISTS 'mailpipe'@'127.0.0.1' IDENTIFIED BY 'mailpipe';
CREATE USER IF NOT EXISTS 'mailpipe'@'localhost' IDENTIFIED BY 'mailpipe';
GRANT ALL PRIVILEGES ON *.* TO 'mailpipe'@'127.0.0.1';
GRANT ALL PRIVILEGES ON *.* TO 'mailpipe'@'localhost';
CREATE DATABASE IF NOT EXISTS mailpipe_app CHARACTER SET utf8mb4;
SQL
    log "mariadb listens on 127.0.0.1:$MARIADB_PORT (user mailpipe, password mailpipe)"
}

# Debian's /usr/sbin wrappers switch to the rabbitmq user, who cannot write a state folder of ours.
# The scripts they wrap run as the calling user, with that user's Erlang cookie.
rabbitmq_bin=/usr/lib/rabbitmq/bin

rabbitmq_environment() {
    local base=$state_dir/rabbitmq
    mkdir -p "$base"
    cat >"$base/rabbitmq.conf" <<CONF
listeners.tcp.1 = 127.0.0.1:$RABBITMQ_PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $RABBITMQ_MANAGEMENT_PORT
prometheus.tcp.ip = 127.0.0.1
prometheus.tcp.port = $RABBITMQ_PROMETHEUS_PORT
# Per-object metrics (per queue), which the dashboards chart by queue.
prometheus.return_per_object_metrics = true
CONF
    echo "[rabbitmq_management,rabbitmq_prometheus]." >"$base/enabled_plugins"
    export RABBITMQ_NODENAME=mailpipe@localhost
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT=$RABBITMQ_PORT
    export RABBITMQ_DIST_PORT=$RABBITMQ_DIST_PORT
    export RABBITMQ_CONFIG_FILE=$base/rabbitmq.conf
    export RABBITMQ_ENABLED_PLUGINS_FILE=$base/enabled_plugins
    export RABBITMQ_MNESIA_BASE=$base/mnesia
    export RABBITMQ_LOG_BASE=$state_dir/logs/rabbitmq-node
    export RABBITMQ_PID_FILE=$base/rabbitmq.pid
    export ERL_EPMD_ADDRESS=127.0.0.1
    # The node's Erlang distribution port listens on loopback too, not on every interface.
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

start_rabbitmq() {
    port_open "$RABBITMQ_PORT" && { log "rabbitmq already listens on $RABBITMQ_PORT"; return; }
    rabbitmq_environment
    launch rabbitmq "$rabbitmq_bin/rabbitmq-server"
    # `wait` waits for the pid file to appear and then for the node to finish booting.
    "$rabbitmq_bin/rabbitmqctl" -n "$RABBITMQ_NODENAME" -q wait --timeout 120 "$RABBITMQ_PID_FILE" >>"$state_dir/logs/rabbitmq.log" 2>&1 || {
        log "rabbitmq did not start; last lines of $state_dir/logs/rabbitmq.log:"
        tail -n 20 "$state_dir/logs/rabbitmq.log" >&2
        return 1
    }
    wait_for rabbitmq "$RABBITMQ_MANAGEMENT_PORT" 60
    log "rabbitmq listens on 127.0.0.1:$RABBITMQ_PORT, management UI http://127.0.0.1:$RABBITMQ_MANAGEMENT_PORT (guest/guest)"
}

start_ferretdb() {
    port_open "$FERRETDB_PORT" && { log "ferretdb already listens on $FERRETDB_PORT"; return; }
    local binary=$tools_dir/ferretdb-$FERRETDB_CACHE_KEY/bin/ferretdb
    [ -x "$binary" ] || "$here/build-tools.sh" ferretdb
    mkdir -p "$state_dir/ferretdb/data"
    # With synchronous(normal), SQLite in WAL mode syncs at checkpoints instead of on every
    # commit. MongoDB's manual (Journaling) likewise has WiredTiger sync its journal every 100 ms
    # unless a write asks for j:true. A killed server loses nothing, and only a power cut can
    # lose the last commits. The other pragmas make checkpoints rarer and reads cheaper.
    # Garbage collection took about a tenth of FerretDB's CPU under load. With GOGC=off and
    # GOMEMLIMIT it collects only when the heap nears 1 GiB (peak resident memory about 1.1 GB
    # in a 20,000-email benchmark).
    local pragmas="_pragma=synchronous(normal)&_pragma=wal_autocheckpoint(20000)"
    pragmas+="&_pragma=mmap_size(1073741824)&_pragma=cache_size(-131072)"
    GOGC=off GOMEMLIMIT=1GiB launch ferretdb "$binary" --handler=sqlite --sqlite-url="file:$state_dir/ferretdb/data/?$pragmas" \
        --state-dir="$state_dir/ferretdb" --listen-addr="127.0.0.1:$FERRETDB_PORT" \
        --debug-addr="127.0.0.1:$FERRETDB_DEBUG_PORT" --telemetry=disable --log-level=warn
    wait_for ferretdb "$FERRETDB_PORT" 30
    log "ferretdb (MongoDB wire protocol, SQLite back end) listens on 127.0.0.1:$FERRETDB_PORT"
}

start_maildev() {
    port_open "$MAILDEV_SMTP_PORT" && { log "maildev already listens on $MAILDEV_SMTP_PORT"; return; }
    local binary=$tools_dir/maildev-$MAILDEV_VERSION/node_modules/.bin/maildev
    [ -x "$binary" ] || "$here/install-packages.sh"
    mkdir -p "$state_dir/maildev"
    launch maildev "$binary" --ip 127.0.0.1 --smtp "$MAILDEV_SMTP_PORT" --web "$MAILDEV_WEB_PORT" \
        --mail-directory "$state_dir/maildev"
    wait_for maildev "$MAILDEV_SMTP_PORT" 30
    log "maildev SMTP on 127.0.0.1:$MAILDEV_SMTP_PORT, web UI http://127.0.0.1:$MAILDEV_WEB_PORT"
}

start_smtp_sink() {
    port_open "$SMTP_SINK_PORT" && { log "smtp-sink already listens on $SMTP_SINK_PORT"; return; }
    # -u is required as root; smtp-sink drops to that user after opening its socket.
    local user=nobody
    [ "$(id -u)" -eq 0 ] || user=$(id -un)
    launch smtp-sink smtp-sink -u "$user" -8 -m 500 "127.0.0.1:$SMTP_SINK_PORT" 1024
    wait_for smtp-sink "$SMTP_SINK_PORT" 10
    log "smtp-sink (accepts and discards) on 127.0.0.1:$SMTP_SINK_PORT"
}

start_prometheus() {
    port_open "$PROMETHEUS_PORT" && { log "prometheus already listens on $PROMETHEUS_PORT"; return; }
    mkdir -p "$state_dir/prometheus"
    sed -e "s/@RABBITMQ_PROMETHEUS_PORT@/$RABBITMQ_PROMETHEUS_PORT/" \
        -e "s/@PUSHGATEWAY_PORT@/$PUSHGATEWAY_PORT/" \
        -e "s#@RULES@#$repo/charts/mailpipe/files/alert-rules.yaml#" \
        "$here/prometheus.yml.in" >"$state_dir/prometheus/prometheus.yml"
    launch prometheus prometheus --config.file="$state_dir/prometheus/prometheus.yml" \
        --storage.tsdb.path="$state_dir/prometheus/data" \
        --web.listen-address="127.0.0.1:$PROMETHEUS_PORT"
    wait_for prometheus "$PROMETHEUS_PORT" 30
    log "prometheus on http://127.0.0.1:$PROMETHEUS_PORT"
}

start_pushgateway() {
    port_open "$PUSHGATEWAY_PORT" && { log "pushgateway already listens on $PUSHGATEWAY_PORT"; return; }
    launch pushgateway prometheus-pushgateway --web.listen-address="127.0.0.1:$PUSHGATEWAY_PORT" \
        --persistence.file="$state_dir/pushgateway.data"
    wait_for pushgateway "$PUSHGATEWAY_PORT" 30
    log "pushgateway on http://127.0.0.1:$PUSHGATEWAY_PORT"
}

# Stops only what this state folder started (it has the pid file), never a server started elsewhere.
stop_one() {
    local name=$1 pid_file=$state_dir/pids/$1.pid
    if [ "$name" = rabbitmq ] && [ -f "$pid_file" ] && port_open "$RABBITMQ_PORT"; then
        rabbitmq_environment
        "$rabbitmq_bin/rabbitmqctl" -n "$RABBITMQ_NODENAME" -q shutdown >/dev/null 2>&1 || true
    fi
    if [ -f "$pid_file" ]; then
        local pid
        pid=$(cat "$pid_file")
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -9 "$pid" 2>/dev/null || true
            log "stopped $name"
        fi
        rm -f "$pid_file"
    fi
}

all_services=(mariadb rabbitmq ferretdb maildev smtp-sink prometheus pushgateway)
command=${1:-status}
shift || true
services=("$@")
[ ${#services[@]} -gt 0 ] || services=("${all_services[@]}")

case "$command" in
    start)
        for service in "${services[@]}"; do "start_${service//-/_}"; done
        ;;
    stop)
        for service in "${services[@]}"; do stop_one "$service"; done
        ;;
    status)
        for service in "${services[@]}"; do
            pid_file=$state_dir/pids/$service.pid
            if [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
                echo "$service: running (pid $(cat "$pid_file"))"
            else
                echo "$service: stopped"
            fi
        done
        ;;
    *)
        log "unknown command '$command'; expected start, stop or status"
        exit 2
        ;;
esac
