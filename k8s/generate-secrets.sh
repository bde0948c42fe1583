#!/usr/bin/env bash
# Create the database Secrets Tessera's manifests reference, each with a new random password, in the
# `tessera` namespace (or $NAMESPACE). Nothing here is committed: the passwords exist only in the cluster.
# A password never appears on a command line (where `ps` would show it): each Secret is written as a manifest
# to kubectl's stdin by the shell's own printf. A Secret that already exists is left as it is (rotate one by
# deleting it, running this again, then the tessera-roles Job, then restarting the pods that use it).
# Run it before `kubectl apply -k k8s/`.
set -euo pipefail
NAMESPACE="${NAMESPACE:-tessera}"

random_password() { head -c 32 /dev/urandom | base64 | tr -d '/+=\n' | head -c 40; }

create() {  # create NAME KEY [KEY...]: one random password per key
    local name="$1"; shift
    if kubectl -n "$NAMESPACE" get secret "$name" >/dev/null 2>&1; then
        echo "secret/$name exists: kept"
        return
    fi
    {
        printf 'apiVersion: v1\nkind: Secret\ntype: Opaque\nmetadata:\n  name: %s\n' "$name"
        printf '  labels: {app.kubernetes.io/part-of: tessera}\nstringData:\n'
        for key in "$@"; do printf '  %s: "%s"\n' "$key" "$(random_password)"; done
    } | kubectl -n "$NAMESPACE" apply -f -
}

digest() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }  # Redis's #<sha256> form: the ACL holds no password

create_redis() {  # Redis's ACL users (shardctl/redis_acl.py): the default user off, admin, serving in its prefix,
    # the scorer on the cache's entries
    local name=tessera-redis admin serving scorer
    if kubectl -n "$NAMESPACE" get secret "$name" >/dev/null 2>&1; then
        echo "secret/$name exists: kept"
        return
    fi
    admin="$(random_password)"
    serving="$(random_password)"
    scorer="$(random_password)"
    {
        printf 'apiVersion: v1\nkind: Secret\ntype: Opaque\nmetadata:\n  name: %s\n' "$name"
        printf '  labels: {app.kubernetes.io/part-of: tessera}\nstringData:\n'
        printf '  admin-password: "%s"\n' "$admin"
        printf '  TESSERA_SERVING__REDIS_PASSWORD: "%s"\n' "$serving"
        printf '  TESSERA_SCORER__REDIS_PASSWORD: "%s"\n' "$scorer"
        printf '  users.acl: |\n'
        printf '    user default off resetkeys resetchannels -@all\n'
        printf '    user admin on #%s ~* &* +@all\n' "$(digest "$admin")"
        printf '    user serving on #%s resetkeys ~serving:* resetchannels &serving:* -@all +@read +@write' \
            "$(digest "$serving")"
        printf ' +@keyspace +@scripting +@transaction +@connection +@pubsub -@dangerous\n'
        printf '    user scorer on #%s resetkeys ~serving:fv:* ~serving:pred:* ~serving:scorer:* resetchannels' \
            "$(digest "$scorer")"
        printf ' -@all +@read +@write +@scripting +@connection -@dangerous\n'
    } | kubectl -n "$NAMESPACE" apply -f -
}

kubectl get namespace "$NAMESPACE" >/dev/null 2>&1 || kubectl apply -f "$(dirname "$0")/namespace.yaml"
create tessera-postgres superuser-password replication-password      # Patroni (Spilo): superuser, replication
create tessera-etcd root-password patroni-password                    # etcd: its root, and Patroni (its namespace)
create tessera-serving-db TESSERA_SERVING__DB_PASSWORD                # serving: reads features and the registry
create tessera-writer-db TESSERA_WRITER__DB_PASSWORD                  # a standalone feature writer
create tessera-pipeline-db TESSERA_PIPELINE__DB_PASSWORD              # Dagster: its steps, its run pods, its storage
create tessera-scorer-db TESSERA_SCORER__DB_PASSWORD                  # the scorer and the re-scoring job's run pods
create_redis                                                          # Redis: serving's and the scorer's ACL users, an admin
