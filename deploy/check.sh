#!/usr/bin/env bash
# The deploy check: the plain manifests are the chart rendered with its defaults, and both pass
# Kubernetes schema validation (kubernetes-validate, from PyPI) and `kubectl kustomize`.
set -euo pipefail
cd "$(dirname "$0")"
python3 render.py --check
kubectl kustomize manifests > /dev/null
kubernetes-validate --strict manifests/ambit.yaml
echo "deploy: ok"
