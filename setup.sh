#!/usr/bin/env bash
# Sets up everything mqtt-harness and its tests need on Debian/Ubuntu: apt packages, the
# virtualenv (.venv), node modules for aedes, and a docker daemon (host networking only).
# Idempotent: a second run only checks. Run as root or with sudo available.
set -euo pipefail
cd "$(dirname "$0")"

say() { printf '[setup] %s\n' "$*"; }
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

APT_PACKAGES=(mosquitto mosquitto-clients nats-server docker.io socat python3-venv nodejs npm chromium tshark
  cmake gcc clang pkg-config libmosquitto-dev libcjson-dev libssl-dev libcmocka-dev libclang-rt-dev  # the firmware host build (libclang-rt-dev: the libFuzzer and ASan runtimes clang links)
  rabbitmq-server activemq libmqtt-client-java ejabberd)  # more brokers (libmqtt-client-java: MQTT codec classes Debian's activemq lacks)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node/npm may come from elsewhere (nodesource, nvm): only install them if the commands are absent.
if command -v node >/dev/null && command -v npm >/dev/null; then
  tmp=(); for p in "${missing[@]}"; do [[ $p == nodejs || $p == npm ]] || tmp+=("$p"); done; missing=("${tmp[@]}")
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "apt: installing ${missing[*]}"
  # Packaged services must not auto-start with their default configs (they would bind 0.0.0.0).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null; $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "venv: creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -e "$stamp" ]; then
  say "venv: installing mqtt-harness and its test/bench dependencies"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test,bench,brokers]'
  rm -f .venv/.installed-*; touch "$stamp"
fi

if [ -f brokers/aedes/package.json ] && [ ! -d brokers/aedes/node_modules ]; then
  say "npm: installing aedes into brokers/aedes"
  (cd brokers/aedes && npm install --no-audit --no-fund --silent)
fi

# The proxy's C forwarder (harness/proxy/forward.c), cached per source hash; built on first use otherwise.
if so=$(.venv/bin/python -m harness.proxy.native 2>&1); then
  say "proxy: native forwarder at $so"
else
  say "proxy: $so (the proxy forwards in Python)"
fi

if [ -x .ci/setup-docker.sh ]; then
  if .ci/setup-docker.sh; then
    # the default broker of `mqtt-harness run` is mosquitto in docker; no registry here, so build it locally
    .venv/bin/mqtt-harness brokers build mosquitto \
      || say "docker: could not build the local mosquitto image; runs fall back to the mosquitto binary"
  else
    say "docker: not available (docker tests will skip with the reason above)"
  fi
fi
say "ready: .venv/bin/mqtt-harness --help"
