"""The Job dagster-k8s's K8sRunLauncher creates for a run, built offline from the rendered instance config: the same
merge the launcher does (its config, then the run's dagster-k8s/config tag) and the same constructor."""

from __future__ import annotations

import yaml
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import (
    DagsterK8sJobConfig,
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)
from kubernetes.client import ApiClient

from tests.k8s.render import find, pod_spec


def run_job(docs: list[dict], tags: dict[str, str], args: list[str], run_id: str = "0123abcd") -> dict:
    """The run worker Job (as a manifest) for a run with ``tags`` whose command is ``args``."""
    instance = yaml.safe_load(find(docs, "ConfigMap", "dagster-instance")["data"]["dagster.yaml"])
    launcher = instance["run_launcher"]["config"]
    code = pod_spec(find(docs, "Deployment", "dagster-code"))["containers"][0]
    image = next(e["value"] for e in code["env"] if e["name"] == "DAGSTER_CURRENT_IMAGE")
    context = K8sContainerContext(
        image_pull_policy=launcher.get("image_pull_policy"),
        security_context=launcher.get("security_context"),
        service_account_name=launcher.get("service_account_name"),
        env_config_maps=launcher.get("env_config_maps"),
        env_secrets=launcher.get("env_secrets"),
        volume_mounts=launcher.get("volume_mounts"),
        volumes=launcher.get("volumes"),
        labels=launcher.get("labels"),
        namespace=launcher.get("job_namespace"),
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(launcher.get("run_k8s_config", {})),
    ).merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(tags)))
    config = DagsterK8sJobConfig(
        job_image=image, dagster_home=launcher["dagster_home"], instance_config_map=launcher["instance_config_map"]
    )
    job = construct_dagster_k8s_job(
        job_config=config,
        args=args,
        job_name=f"dagster-run-{run_id}",
        pod_name=f"dagster-run-{run_id}",
        component="run_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": "profile_and_train", "dagster/run-id": run_id},
    )
    return ApiClient().sanitize_for_serialization(job)
