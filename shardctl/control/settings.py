"""The control plane's own section (``TESSERA_CONTROL__*``): the role ``shardctl`` connects as for what changes
servers (schema, shard map, resharding, roles), and the passwords ``shardctl roles ensure`` gives each part's
role. On PostgreSQL 15 that role must be a superuser: only one may create the subscriptions resharding copies
rows with (docs/architecture/resharding.md, section 3)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr

from shardctl.credentials import DbCredentialFields
from shardctl.settings import SectionSettings, section_config
from shardctl.store.grants import PIPELINE_ROLE, SCORER_ROLE, SERVING_ROLE, WRITER_ROLE


class ControlSettings(SectionSettings, DbCredentialFields):
    """The control plane's credentials, and the part roles' passwords it sets (unset: no password)."""

    section: ClassVar[str] = "control"
    model_config = section_config(section)

    serving_password: SecretStr | None = None
    writer_password: SecretStr | None = None
    pipeline_password: SecretStr | None = None
    scorer_password: SecretStr | None = None
    # A deployment's etcd (Kubernetes), which `shardctl roles etcd` closes to all but root and Patroni. Patroni's
    # namespace there is its default: Spilo sets another only from a NAMESPACE variable, which the manifests leave out.
    etcd_url: str | None = None
    etcd_root_password: SecretStr | None = None
    etcd_patroni_password: SecretStr | None = None
    patroni_namespace: str = Field(default="/service/", pattern=r"^/.*/$")

    def role_passwords(self) -> dict[str, str | None]:
        given = {
            SERVING_ROLE: self.serving_password,
            WRITER_ROLE: self.writer_password,
            PIPELINE_ROLE: self.pipeline_password,
            SCORER_ROLE: self.scorer_password,
        }
        return {role: secret.get_secret_value() if secret else None for role, secret in given.items()}
