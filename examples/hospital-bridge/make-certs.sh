#!/usr/bin/env sh
# Make a throw-away CA and the certificates the example uses (needs openssl). Never use these
# in production: real deployments use the hospital's and the vendor's PKI.
set -eu
cd "$(dirname "$0")"
mkdir -p certs && cd certs
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=Ferry example CA" -keyout ca.key -out ca.pem 2>/dev/null
leaf() { # name, CN, extensions
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
    -keyout "$1.key" -out "$1.csr" 2>/dev/null
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
leaf ferry localhost "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
leaf his his.hospital.local "subjectAltName=DNS:his.hospital.local
extendedKeyUsage=clientAuth"
leaf bridge bridge.hospital.local "subjectAltName=DNS:bridge.hospital.local
extendedKeyUsage=clientAuth"
leaf scheduler scheduler.vendor.example "subjectAltName=DNS:scheduler.vendor.example
extendedKeyUsage=clientAuth"
echo "certificates written to $(pwd)"
