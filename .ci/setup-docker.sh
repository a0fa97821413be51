#!/bin/sh
# Make sure a docker daemon answers on this machine; start one if not. Idempotent, no systemd needed.
#
# The daemon runs with --bridge=none --iptables=false: brokers use host networking only, and the
# harness must never create bridges or touch the host firewall.
#
# Environment:
#   MQTT_HARNESS_DOCKERD_DIR   where the daemon's log and pid go (default /var/lib/mqtt-harness)
#   MQTT_HARNESS_DOCKERD_WAIT  seconds to wait for `docker info` (default 60)
set -eu

STATE_DIR=${MQTT_HARNESS_DOCKERD_DIR:-/var/lib/mqtt-harness}
WAIT=${MQTT_HARNESS_DOCKERD_WAIT:-60}
LOG=$STATE_DIR/dockerd.log
PIDFILE=$STATE_DIR/dockerd.pid

say() { echo "setup-docker: $*"; }
die() { echo "setup-docker: ERROR: $*" >&2; exit 1; }

daemon_answers() { timeout 10 docker info >/dev/null 2>&1; }

pid_alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

if ! command -v dockerd >/dev/null 2>&1 && [ ! -x /usr/sbin/dockerd ]; then
    [ "$(id -u)" = 0 ] || die "dockerd is not installed; run as root to install it (apt-get install docker.io)"
    say "installing docker.io"
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io \
        || die "apt-get install docker.io failed"
fi
command -v docker >/dev/null 2>&1 || die "the docker CLI is missing (apt-get install docker.io)"
DOCKERD=$(command -v dockerd || echo /usr/sbin/dockerd)

if daemon_answers; then
    say "docker daemon already answers ($(docker version --format '{{.Server.Version}} API {{.Server.APIVersion}}'))"
    if docker network ls --format '{{.Driver}}' | grep -qx bridge; then
        say "warning: this daemon has a bridge network; CI wants dockerd --bridge=none --iptables=false" >&2
    fi
    exit 0
fi

mkdir -p "$STATE_DIR"
pid=$(cat "$PIDFILE" 2>/dev/null || true)
if pid_alive "$pid"; then
    say "dockerd (pid $pid) is running but not answering yet; waiting for it"
else
    [ "$(id -u)" = 0 ] || die "no docker daemon answers and starting one needs root: sudo $0"
    say "starting $DOCKERD --bridge=none --iptables=false (log: $LOG)"
    # setsid: the daemon must outlive this shell and its job control.
    setsid nohup "$DOCKERD" --bridge=none --iptables=false >>"$LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PIDFILE"
fi

deadline=$(( $(date +%s) + WAIT ))
until daemon_answers; do
    if ! pid_alive "$pid"; then
        tail -n 20 "$LOG" >&2 || true
        die "dockerd (pid $pid) exited; see $LOG (last lines above)"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        tail -n 20 "$LOG" >&2 || true
        die "dockerd (pid $pid) did not answer \`docker info\` within ${WAIT}s; see $LOG"
    fi
    sleep 0.5
done
say "docker daemon ready: pid $pid, $(docker version --format '{{.Server.Version}} API {{.Server.APIVersion}}'), log $LOG"
