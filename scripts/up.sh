#!/usr/bin/env bash
# Brings up the whole system locally: a kube-apiserver + etcd built from their
# Go modules, PostgreSQL, a local HTTPS identity provider and webhook
# receiver, the schema migrations, the Helm chart (CRDs, admission policies,
# RBAC), the operator under the chart's ServiceAccount and the examples
# (Tenants, identity providers, group mappings, webhook subscriptions, a
# fronting link, license grants signed with a throwaway vendor key); then
# shows them with their conditions and the rows they produced. Nothing leaves
# the machine, and every key it makes lives in a temporary directory.
#
#   scripts/up.sh          keep the stack running until Ctrl-C
#   scripts/up.sh --once   show the result and tear everything down
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
once=false
[ "${1:-}" = "--once" ] && once=true

source scripts/lib.sh
ensure_prerequisites

bin_dir=$(bash e2e/controlplane/build.sh | tail -n 1)
echo "==> building the operator"
cargo build --quiet -p countersign-operator -p countersign-e2e --bins
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')

state=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$state"
}
trap cleanup EXIT

echo "==> starting kube-apiserver, etcd and PostgreSQL"
"$target/debug/countersign-dev-stack" "$state/env" &
pids+=($!)
for _ in $(seq 1 600); do
  [ -f "$state/env" ] && break
  kill -0 "${pids[0]}" 2>/dev/null || { echo "the control plane failed to start" >&2; exit 1; }
  sleep 0.2
done
# shellcheck disable=SC1091
source "$state/env"
export PATH="$bin_dir:$target/debug:$PATH"

echo "==> migrating the API database"
countersign migrate
echo "==> installing the Helm chart (CRDs, admission policies, RBAC, the operator's ServiceAccount and Deployment)"
# The same chart a cluster gets. Without a kubelet the Deployment's pods never
# run here; the operator runs on this machine instead, under the chart's
# ServiceAccount (below). Hooks are skipped: the migrations ran above.
helm install countersign charts/countersign --namespace countersign-system --create-namespace \
  --no-hooks --set license.keyringConfigMap=countersign-license-keyring >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
kubectl apply --server-side -f examples/70-approvers.yaml >/dev/null
echo "==> creating the operator's encryption key Secret"
kubectl -n countersign-system create secret generic countersign-encryption-key \
  --from-file=key=<(head -c 32 /dev/urandom) >/dev/null
echo "==> making a throwaway vendor key and the operator's license keyring ConfigMap"
# A real vendor keeps its private key to itself; the demo plays the vendor
# with a key made for this run only, in the temporary state directory. The
# keyring holds the raw 32-byte public key (the last 32 bytes of its DER
# form) under the key ID examples/50-license-grant.yaml names.
openssl genpkey -algorithm ed25519 -out "$state/vendor-key.pem"
vendor_public_key=$(openssl pkey -in "$state/vendor-key.pem" -pubout -outform DER | tail -c 32 | base64)
kubectl -n countersign-system create configmap countersign-license-keyring \
  --from-literal=exaion-2026="$vendor_public_key" >/dev/null
echo "==> starting the operator as the chart's ServiceAccount"
# A token from the API server's TokenRequest API, as a pod would get: every
# call the operator makes is authorised by the chart's RBAC, not the admin's.
kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$state/ca.crt"
operator_kubeconfig="$state/operator.kubeconfig"
KUBECONFIG="$operator_kubeconfig" kubectl config set-cluster local --embed-certs \
  --server="$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')" \
  --certificate-authority="$state/ca.crt" >/dev/null
KUBECONFIG="$operator_kubeconfig" kubectl config set-credentials countersign \
  --token="$(kubectl -n countersign-system create token countersign --duration=24h)" >/dev/null
KUBECONFIG="$operator_kubeconfig" kubectl config set-context countersign --cluster=local --user=countersign >/dev/null
KUBECONFIG="$operator_kubeconfig" kubectl config use-context countersign >/dev/null
# Loopback is allowed only because the demo identity provider and webhook
# receiver run on it; each has its own throwaway CA, and the operator trusts
# both. The commercial chain of every grant must run from the vendor to this
# platform's operator, as the example grants' chains do.
KUBECONFIG="$operator_kubeconfig" countersign run --health-addr 127.0.0.1:0 \
  --encryption-key-secret countersign-system/countersign-encryption-key \
  --audit-anchor countersign-system/countersign-audit-anchor \
  --outbound-allow-loopback \
  --outbound-ca-file "$DEV_IDP_CA_FILE" --outbound-ca-file "$DEV_WEBHOOK_CA_FILE" \
  --license-keyring countersign-system/countersign-license-keyring \
  --license-vendor Exaion --license-operator "Acme Corporation" >"$state/operator.log" 2>&1 &
pids+=($!)
echo "==> applying the example ApprovalPolicy, namespaces and Tenants (in their sync-wave order)"
# A just-established CRD can take a moment to be served; retry until it is.
for attempt in $(seq 1 30); do
  kubectl apply -f examples/60-approval-policy.yaml 2>"$state/apply.err" && break
  [ "$attempt" = 30 ] && { cat "$state/apply.err" >&2; exit 1; }
  sleep 1
done
kubectl wait --for=condition=Ready approvalpolicies --all --timeout=60s >/dev/null || true
kubectl apply -f examples/00-namespaces.yaml -f examples/10-tenants.yaml
kubectl wait --for=condition=Ready tenants --all --timeout=120s >/dev/null || true
echo "==> applying the example identity providers and group mappings (pointed at the local IdP)"
sed -e "s#https://login.acme.example/v2.0#$DEV_IDP_ISSUER#" \
    -e "s#metadataUrl: .*#metadataUrl: $DEV_IDP_METADATA_URL#" \
    -e "s#entityId: .*#entityId: $DEV_IDP_ENTITY_ID#" \
    -e "s#ssoUrl: .*#ssoUrl: $DEV_IDP_SSO_URL#" \
    examples/20-identity-provider.yaml | kubectl apply -f -
# The approval floor (on by default) holds every new identity provider for a
# second person, as reference 000 asks: the providers were declared by this
# shell's user, so another person, bob@example.com of platform-approvers,
# approves the digest each one shows.
for idp in acme-entra acme-saml; do
  digest=""
  for _ in $(seq 1 300); do
    digest=$(kubectl -n team-acme get identityprovider "$idp" -o jsonpath='{.status.pendingDigest}')
    [ -n "$digest" ] && break
    sleep 0.2
  done
  echo "    $idp awaits approval (digest $digest); bob@example.com approves it"
  kubectl --as=bob@example.com --as-group=platform-approvers --as-group=system:authenticated \
    -n team-acme annotate identityprovider "$idp" \
    countersign.dev/approved-by=bob@example.com countersign.dev/approved-digest="$digest" >/dev/null
done
kubectl wait --for=condition=Ready identityproviders,groupmappings --all -A --timeout=120s >/dev/null || true
echo "==> applying the example webhook subscriptions (pointed at the local receiver)"
# A URL is subscribed once per tenant, so each subscription gets its own path.
sed -e "s#https://hooks.acme.example/wipe#$DEV_WEBHOOK_URL/wipe#" \
    -e "s#https://audit.acme.example/countersign#$DEV_WEBHOOK_URL/audit#" \
    examples/30-webhook-subscription.yaml | kubectl apply -f -
kubectl wait --for=condition=Ready webhooksubscriptions --all -A --timeout=120s >/dev/null || true
# acme-certificates asks for a signed test delivery (spec.verify); the
# receiver checks it with the secret the operator generated.
kubectl -n team-acme wait --for=condition=Verified webhooksubscription/acme-certificates --timeout=60s >/dev/null || true
echo "==> registering two platform resources (the platform's own rows) and applying the example FrontingLink"
psql -q "$DATABASE_URL" -c "INSERT INTO platform_resources (slug, name, scopes) VALUES
  ('portal', 'Customer portal', '{billing.read}'),
  ('billing-api', 'Billing API', '{invoices.read,payments.read}')"
kubectl apply -f examples/40-fronting-link.yaml
kubectl wait --for=condition=Ready frontinglinks --all --timeout=60s >/dev/null || true
echo "==> signing the example LicenseGrants with the throwaway vendor key and applying them"
# The operator prints the exact bytes a vendor signs for each grant; openssl
# signs them (raw Ed25519). Each signature replaces its own grant's
# placeholder in a copy of the example: sed edits from the grant's name line
# to its signature value line.
countersign license canonical examples/50-license-grant.yaml --out-dir "$state/grants" >/dev/null
sign=()
for canonical in "$state"/grants/*.bin; do
  grant=$(basename "$canonical" .bin)
  signature=$(openssl pkeyutl -sign -inkey "$state/vendor-key.pem" -rawin -in "$canonical" | base64 -w0)
  sign+=(-e "/^  name: $grant\$/,/^    value: /s#^    value: .*#    value: $signature#")
done
sed "${sign[@]}" examples/50-license-grant.yaml | kubectl apply -f -
kubectl wait --for=condition=Ready licensegrants --all --timeout=60s >/dev/null || true

echo
kubectl get approvalpolicies -o wide
echo
kubectl get tenants -o wide
echo
kubectl get tenants -o custom-columns='NAME:.metadata.name,READY:.status.conditions[?(@.type=="Ready")].status,REASON:.status.conditions[?(@.type=="Ready")].reason,SYNCED:.status.conditions[?(@.type=="Synced")].status,STALLED:.status.conditions[?(@.type=="Stalled")].status,DATABASE-ID:.status.databaseId'
echo
echo "Rows in the API database:"
psql "$DATABASE_URL" -c "SELECT slug, name, status, deleted_at FROM tenants ORDER BY slug"
echo
kubectl get identityproviders,groupmappings -A -o wide
echo
kubectl get frontinglinks -o wide
echo
psql "$DATABASE_URL" -c "SELECT name, protocol, status, issuer_url IS NOT NULL AS oidc, client_secret_ref IS NOT NULL AS sealed_secret FROM identity_providers ORDER BY name"
psql "$DATABASE_URL" -c "SELECT name FROM public_identity_providers ORDER BY name"
echo "Who asked for and who approved each provider (the audit log):"
psql "$DATABASE_URL" -c "SELECT seq, object_key, action, requester, approver, detail->>'declared_by' AS declared_by
  FROM audit_log WHERE kind = 'IdentityProvider' ORDER BY seq"
echo
kubectl get webhooksubscriptions -A -o wide
echo
kubectl get webhooksubscriptions -A -o custom-columns='NAMESPACE:.metadata.namespace,NAME:.metadata.name,VERIFIED:.status.conditions[?(@.type=="Verified")].status,REASON:.status.conditions[?(@.type=="Verified")].reason,HTTP:.status.verification.statusCode,DELIVERY:.status.verification.deliveryId,MESSAGE:.status.conditions[?(@.type=="Verified")].message'
echo
# secret_ref points at the sealed signing secret: show that it is there, never what it holds.
psql "$DATABASE_URL" -c "SELECT t.slug AS tenant, w.url, w.events, w.active, w.secret_ref IS NOT NULL AS sealed_secret
  FROM webhook_subscriptions w JOIN tenants t ON t.id = w.tenant_id WHERE w.deleted_at IS NULL ORDER BY w.url"
echo "Deliveries the local webhook receiver checked ($(wc -l <"$DEV_WEBHOOK_LOG")):"
cat "$DEV_WEBHOOK_LOG"
echo
kubectl get licensegrants -o wide
echo
psql "$DATABASE_URL" -c "SELECT t.slug AS tenant, q.license_type, q.quantity
  FROM license_quotas q JOIN tenants t ON t.id = q.tenant_id ORDER BY t.slug, q.license_type"

if $once; then
  # Every object applied above must be Ready, and a subscription that asked
  # for a test delivery must have had it accepted (Verified).
  not_ready=$(kubectl get approvalpolicies,tenants,identityproviders,groupmappings,frontinglinks,webhooksubscriptions,licensegrants -A \
    -o jsonpath='{range .items[*]}{.kind}/{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -v '=True$' || true)
  not_verified=$(kubectl get webhooksubscriptions -A \
    -o jsonpath='{range .items[?(@.spec.verify==true)]}{.kind}/{.metadata.name}={.status.conditions[?(@.type=="Verified")].status}{"\n"}{end}' | grep -v '=True$' || true)
  # The operator ran under the chart's ServiceAccount: a refused call means
  # the chart's RBAC is short of what the code needs.
  forbidden=$(grep -i 'forbidden' "$state/operator.log" || true)
  if [ -n "$not_ready$not_verified$forbidden" ]; then
    [ -z "$not_ready" ] || echo "not Ready: $not_ready" >&2
    [ -z "$not_verified" ] || echo "not Verified: $not_verified" >&2
    [ -z "$forbidden" ] || echo "the chart's RBAC refused the operator: $forbidden" >&2
    cat "$state/operator.log" >&2
    exit 1
  fi
  exit 0
fi
cat <<MSG

The stack is running. In another shell:
  source $state/env; export PATH="$bin_dir:$target/debug:\$PATH"
  kubectl get tenants        # then edit examples/10-tenants.yaml and kubectl apply it
Operator log: $state/operator.log
Webhook deliveries the local receiver checked: $DEV_WEBHOOK_LOG
Press Ctrl-C to stop and clean up.
MSG
wait "${pids[1]}"
