#!/usr/bin/env bash
# Makes sure the services the test suite needs are up on this (Debian) machine:
#   PostgreSQL on 127.0.0.1:5432, user postgres, trust authentication over TCP
#   Redis on 127.0.0.1:6379
# Installs them with apt-get when missing, starts them when down, and waits until they answer.
# It never stops, restarts or reconfigures a service that already works.
#
# Run it directly, or source it and call `ensure_services` (as .ci/run does).
# CI_PG_PORT and CI_PG_CLUSTER choose another port/cluster (to try the script on a scratch cluster).
set -euo pipefail
shopt -s inherit_errexit

PG_HOST=127.0.0.1
PG_PORT=${CI_PG_PORT:-5432}
PG_CLUSTER=${CI_PG_CLUSTER:-main}
REDIS_HOST=127.0.0.1
REDIS_PORT=6379
SERVICE_WAIT_SECONDS=${SERVICE_WAIT_SECONDS:-30}
HBA_MARKER="# flowline ci: trust the postgres user over loopback TCP"

svc_log() { printf '[services] %s\n' "$*" >&2; }
svc_fail() {
  svc_log "ERROR: $*"
  return 1
}
svc_have() { command -v "$1" >/dev/null 2>&1; }

svc_as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif svc_have sudo; then
    sudo -n "$@"
  else
    svc_fail "need root to run: $*"
  fi
}

# Polls `check` (a command) once a second until it succeeds or SERVICE_WAIT_SECONDS pass.
svc_wait_for() {
  local what=$1
  shift
  local waited=0
  until "$@" >/dev/null 2>&1; do
    if [ "$waited" -ge "$SERVICE_WAIT_SECONDS" ]; then
      svc_log "$what did not come up within ${SERVICE_WAIT_SECONDS}s"
      return 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  svc_log "$what is up (after ${waited}s)"
}

svc_install_missing() {
  local packages=()
  if ! svc_have pg_ctlcluster || ! svc_have pg_isready || [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
    packages+=(postgresql)
  fi
  if ! svc_have redis-server || ! svc_have redis-cli; then
    packages+=(redis-server)
  fi
  if [ "${#packages[@]}" -eq 0 ]; then
    return 0
  fi
  svc_log "installing ${packages[*]}"
  svc_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  svc_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}" </dev/null
}

# The newest installed PostgreSQL major version that has the cluster (creating it if none has).
svc_pg_version() {
  local version
  version=$(find /etc/postgresql -mindepth 2 -maxdepth 2 -type d -name "$PG_CLUSTER" 2>/dev/null |
    awk -F/ '{ print $4 }' | sort -V | tail -n 1)
  if [ -z "$version" ]; then
    version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)
    [ -n "$version" ] || svc_fail "no PostgreSQL installation found under /usr/lib/postgresql" || return 1
    svc_log "creating PostgreSQL $version cluster '$PG_CLUSTER'"
    svc_as_root pg_createcluster "$version" "$PG_CLUSTER" --port "$PG_PORT" >&2
  fi
  printf '%s\n' "$version"
}

svc_pg_ready() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; }

svc_pg_trusted() {
  PGCONNECT_TIMEOUT=3 psql -X -w -q -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -tAc "select 1" \
    </dev/null >/dev/null 2>&1
}

ensure_postgres() {
  local version
  version=$(svc_pg_version)
  if svc_pg_ready; then
    svc_log "PostgreSQL is already up on $PG_HOST:$PG_PORT"
  else
    svc_log "starting PostgreSQL $version/$PG_CLUSTER"
    # A concurrent start, or a stale pid file the start cleans up, may make this report an error
    # while the server still comes up; readiness below is what counts.
    svc_as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$PG_CLUSTER" start >&2 ||
      svc_log "pg_ctlcluster start reported an error; waiting for the server anyway"
    if ! svc_wait_for "PostgreSQL" svc_pg_ready; then
      tail -n 30 "/var/log/postgresql/postgresql-$version-$PG_CLUSTER.log" >&2 2>/dev/null || true
      return 1
    fi
  fi

  if svc_pg_trusted; then
    return 0
  fi
  # A fresh Debian cluster asks for a password over TCP; the suite connects as postgres without one.
  local hba="/etc/postgresql/$version/$PG_CLUSTER/pg_hba.conf"
  if ! grep -qF "$HBA_MARKER" "$hba"; then
    svc_log "allowing user postgres from loopback without a password in $hba"
    svc_as_root sed -i "1i $HBA_MARKER\nhost all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust" "$hba"
    svc_as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$PG_CLUSTER" reload >&2
  fi
  svc_wait_for "PostgreSQL trust authentication" svc_pg_trusted ||
    svc_fail "cannot connect as postgres@$PG_HOST:$PG_PORT without a password (check $hba)"
}

svc_redis_ready() { [ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]; }

ensure_redis() {
  if svc_redis_ready; then
    svc_log "Redis is already up on $REDIS_HOST:$REDIS_PORT"
    return 0
  fi
  svc_log "starting Redis"
  svc_as_root mkdir -p /var/lib/redis /var/log/redis
  # `-::1`: bind IPv6 loopback too when the machine has it, without failing when it does not.
  svc_as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
    --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  if ! svc_wait_for "Redis" svc_redis_ready; then
    tail -n 30 /var/log/redis/ci.log >&2 2>/dev/null || true
    return 1
  fi
}

ensure_services() {
  svc_install_missing
  ensure_postgres
  ensure_redis
}

# Executed rather than sourced: do the work.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  ensure_services
fi
