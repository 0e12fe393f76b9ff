#!/usr/bin/env bash
# Makes a CA and a serving certificate for the external metrics API, so the APIService can
# pin the CA in caBundle instead of skipping verification.
#
#   certs/generate.sh [OUT_DIR] [NAMESPACE] [SERVICE]
#
# Writes OUT_DIR/{ca.crt,ca.key,tls.crt,tls.key}, OUT_DIR/secret.yaml (Secret
# datadog-cluster-agent-metrics-api-cert, mounted at external_metrics_provider.cert_dir) and
# OUT_DIR/apiservice.yaml (apiservice/apiservice.yaml with caBundle filled in).
# The agent re-reads tls.crt/tls.key when they change: rotate by re-running this with the
# same CA (kept in OUT_DIR) and updating the Secret.
set -euo pipefail

out=${1:-certs/out}
ns=${2:-datadog}
svc=${3:-datadog-cluster-agent-metrics-api}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
umask 077

if [ ! -f "$out/ca.key" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
    -keyout "$out/ca.key" -out "$out/ca.crt" -subj "/CN=datadog-cluster-agent-metrics-ca" 2>/dev/null
fi

cat > "$out/leaf.cnf" <<CNF
[req]
distinguished_name = dn
req_extensions = ext
prompt = no
[dn]
CN = $svc.$ns.svc
[ext]
subjectAltName = DNS:$svc,DNS:$svc.$ns,DNS:$svc.$ns.svc,DNS:$svc.$ns.svc.cluster.local
extendedKeyUsage = serverAuth
keyUsage = digitalSignature, keyEncipherment
CNF
openssl req -newkey rsa:2048 -nodes -keyout "$out/tls.key" -out "$out/tls.csr" -config "$out/leaf.cnf" 2>/dev/null
openssl x509 -req -in "$out/tls.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
  -days 365 -sha256 -extfile "$out/leaf.cnf" -extensions ext -out "$out/tls.crt" 2>/dev/null
rm -f "$out/tls.csr" "$out/leaf.cnf"

b64() { base64 -w0 < "$1"; }
cat > "$out/secret.yaml" <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: datadog-cluster-agent-metrics-api-cert
  namespace: $ns
type: kubernetes.io/tls
data:
  tls.crt: $(b64 "$out/tls.crt")
  tls.key: $(b64 "$out/tls.key")
YAML
sed -e "s|\${CA_BUNDLE}|$(b64 "$out/ca.crt")|" \
    -e "s|namespace: datadog|namespace: $ns|" \
    -e "s|name: datadog-cluster-agent-metrics-api|name: $svc|" \
    "$here/../apiservice/apiservice.yaml" > "$out/apiservice.yaml"
echo "wrote $out/{ca.crt,tls.crt,tls.key,secret.yaml,apiservice.yaml}"
