#!/usr/bin/env bash
# Add a shard server to the manifests: `k8s/postgres/new-server.sh shard2` writes the overlay k8s/postgres/shard2
# (a Patroni cluster like every other: k8s/postgres/base with the name prefix and the tessera.io/cluster label)
# and lists it in k8s/kustomization.yaml. Then `kubectl apply -k k8s/` starts it, and the tessera-migrate Job
# (k8s/resharding) registers it and moves logical shards onto it: README, "Kubernetes".
set -euo pipefail
name="${1:?usage: new-server.sh NAME (lowercase letters, digits and -, e.g. shard2)}"
[[ "$name" =~ ^[a-z][a-z0-9-]{0,30}$ ]] || { echo "new-server.sh: bad name $name" >&2; exit 2; }
here="$(cd "$(dirname "$0")" && pwd)"
overlay="$here/$name"
[ ! -e "$overlay" ] || { echo "new-server.sh: $overlay exists" >&2; exit 1; }
mkdir "$overlay"
cat > "$overlay/kustomization.yaml" <<YAML
# Written by k8s/postgres/new-server.sh $name: the Patroni cluster "$name" (k8s/postgres/base).
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namePrefix: $name-
labels:
  - pairs: {tessera.io/cluster: $name}
    includeSelectors: true
resources:
  - ../base
YAML
top="$here/../kustomization.yaml"
# After the last Patroni cluster listed (the roles Job follows them).
awk -v entry="  - postgres/$name" '
  { lines[NR] = $0; if ($0 ~ /^  - postgres\/[a-z0-9-]+$/) last = NR }
  END { for (i = 1; i <= NR; i++) { print lines[i]; if (i == last) print entry } }
' "$top" > "$top.tmp" && mv "$top.tmp" "$top"
echo "added $overlay; render with: kubectl kustomize $(dirname "$here")"
