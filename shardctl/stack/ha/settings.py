"""Timings and guarantees of the local Patroni clusters (``TESSERA_HA__*``, or the ``ha`` object of the settings
file). They shape the Patroni YAML ``shardctl.stack.ha.config`` renders; a deployment's Patroni has its own."""

from __future__ import annotations

from pydantic import Field, model_validator

from shardctl.settings import SectionSettings, section_config


class HASettings(SectionSettings):
    """High availability of each shard (`shardctl stack up --ha`): Patroni with etcd, timings for fast failover.

    Failover after a hard kill takes about ``ttl`` (the leader key must expire) plus one promotion. Patroni
    must renew the key within ``ttl``: ``loop_wait + 2 * retry_timeout <= ttl`` (checked here). A short ttl
    fails over fast but a primary whose Patroni stalls longer than ttl (CPU starvation) loses its lock: see
    docs/architecture/process.md for the trade-offs.
    """

    section = "ha"
    model_config = section_config(section)

    replicas: int = Field(default=1, ge=1, le=4)
    ttl: int = Field(default=8, ge=7, le=300)
    loop_wait: int = Field(default=1, ge=1, le=60)
    retry_timeout: int = Field(default=3, ge=3, le=120)  # Patroni floors it at 3
    # Commits wait for one replica: no acknowledged write is lost on failover (RPO = 0).
    synchronous_mode: bool = True
    # Strict: writes block while no synchronous replica is left (never acked on one copy). Non-strict:
    # Patroni drops to asynchronous so writes continue, at the risk of losing them with the primary.
    synchronous_mode_strict: bool = False
    use_pg_rewind: bool = True
    # Keep a primary serving while etcd is unreachable if every member confirms it over the REST API.
    failsafe_mode: bool = True
    maximum_lag_on_failover: int = Field(default=1048576, ge=0)

    @model_validator(mode="after")
    def _renewal_fits_in_ttl(self) -> HASettings:
        if self.loop_wait + 2 * self.retry_timeout > self.ttl:
            raise ValueError(
                f"ha timings need loop_wait + 2*retry_timeout <= ttl, got "
                f"{self.loop_wait} + 2*{self.retry_timeout} > {self.ttl}"
            )
        return self
