#!/usr/bin/env bash
# Installs the Debian packages the test suite and the benchmarks drive as real peers:
#   postfix  (postfix, smtp-source, smtp-sink, postqueue), swaks (+ Net::SSLeay for --tls),
#   openssl, make, fetchmail, getmail6, dovecot-core + dovecot-pop3d (POP3 reference server),
#   isync (mbsync), offlineimap3, curl and dovecot-imapd (IMAP clients and reference server),
#   systemd (systemd-analyze verifies packaging/mailhouse.service; nothing is started),
#   pebble (Let's Encrypt's test ACME server; the ACME tests start private instances).
#   chromium + chromium-driver (the web admin's browser tests, headless, through Selenium).
# Idempotent: when every package is already installed it does nothing (no apt-get update).
# Must run as root (or through sudo). No system daemon is started: debconf is preseeded to
# "No configuration" and a temporary policy-rc.d refuses every service start during the install.
set -euo pipefail

PACKAGES=(postfix swaks libnet-ssleay-perl openssl make libsasl2-modules sasl2-bin fetchmail getmail6 dovecot-core dovecot-pop3d
    dovecot-imapd isync offlineimap3 curl systemd pebble chromium chromium-driver)

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-deps: all Debian packages present (${PACKAGES[*]})"
    exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "install-deps: need root to install: ${missing[*]}" >&2
        exit 1
    fi
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
POLICY=/usr/sbin/policy-rc.d
policy_created=0
cleanup() {
    if [[ $policy_created -eq 1 ]]; then
        "${SUDO[@]}" rm -f "$POLICY"
    fi
}
trap cleanup EXIT

if [[ ! -e "$POLICY" ]]; then
    # exit 101 = "action forbidden": invoke-rc.d starts no daemon (so none grabs port 25).
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 0755 "$POLICY"
    policy_created=1
fi

echo "postfix postfix/main_mailer_type select No configuration" \
    | "${SUDO[@]}" debconf-set-selections

"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends "${missing[@]}"
echo "install-deps: done"
