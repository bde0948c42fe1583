"""Least privilege on real Postgres: each part's role can do its job on the session stack's catalog and shards,
and nothing else (no writes for serving, no DDL for the writer, nothing read that a part does not need)."""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import errors
from psycopg.conninfo import make_conninfo

from shardctl.control.roles import RoleSetupError, ensure_roles
from shardctl.credentials import DbCredentials, location_only, with_credentials
from shardctl.process import free_port
from shardctl.settings import TesseraSettings, load_settings
from shardctl.stack.binaries import find_postgres
from shardctl.stack.manager import Stack
from shardctl.stack.postgres import SUPERUSER, PostgresServer
from shardctl.stack.secrets import StackSecrets
from shardctl.store import FeatureStore, prepare
from shardctl.store.grants import PART_ROLES, PIPELINE_ROLE, SERVING_ROLE, SHARD_GRANTS, WRITER_ROLE
from shardctl.store.registry import ModelRegistry
from shardctl.store.schema import MIGRATIONS, apply_schema
from shardctl.store.writer import FeatureRow

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def role_login(role: str) -> DbCredentials:
    """``role`` with its password: the stack's passfile for it (every server asks for a SCRAM password)."""
    return DbCredentials(role, passfile=str(StackSecrets.of(load_settings().data_dir).pgpass(role)))


def as_role(dsn: str, role: str) -> str:
    return with_credentials(dsn, role_login(role))


def servers(settings: TesseraSettings) -> list[str]:
    return [settings.catalog_dsn or "", *settings.shard_dsns()]


def refused(dsn: str, statement: str, params: tuple = ()) -> bool:
    """True when Postgres refuses ``statement`` for lack of privilege (anything else fails the test)."""
    with psycopg.connect(dsn) as conn:
        try:
            conn.execute(statement, params)
        except errors.InsufficientPrivilege:
            return True
        finally:
            conn.rollback()  # a statement that was allowed leaves nothing behind
    return False


def privilege_matrix(settings: TesseraSettings) -> list[tuple]:
    """Every table privilege every part role holds, on every server (to compare before and after)."""
    matrix = []
    for dsn in servers(settings):
        with psycopg.connect(dsn) as conn:
            matrix += conn.execute(
                "SELECT current_setting('port'), grantee, table_name, privilege_type "
                "FROM information_schema.role_table_grants WHERE grantee = ANY(%s) ORDER BY 1, 2, 3, 4",
                (list(PART_ROLES),),
            ).fetchall()
            matrix += conn.execute(
                "SELECT current_setting('port'), grantee, table_name, column_name, privilege_type "
                "FROM information_schema.column_privileges WHERE grantee = ANY(%s) ORDER BY 1, 2, 3, 4, 5",
                (list(PART_ROLES),),
            ).fetchall()
    return matrix


@pytest.fixture(scope="module")
def written(settings: TesseraSettings) -> tuple[str, ModelRegistry]:
    """A feature set written through the store as the writer's role, and a registered, promoted model."""
    feature_set = f"roles_{uuid.uuid4().hex[:8]}"
    with FeatureStore.open(settings, prepare_topology=False, credentials=role_login(WRITER_ROLE)) as store:
        store.write(feature_set, [FeatureRow(f"r{i}", T0, {"x": i}) for i in range(20)])
    registry = ModelRegistry(as_role(settings.catalog_dsn or "", PIPELINE_ROLE))
    return feature_set, registry


@pytest.mark.req("PLAT.least-privilege")
def test_the_stack_creates_every_part_role_on_every_server_able_to_log_in_and_nothing_more(settings) -> None:
    for dsn in servers(settings):
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(
                "SELECT rolname, rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls "
                "FROM pg_roles WHERE rolname = ANY(%s) ORDER BY 1",
                (list(PART_ROLES),),
            ).fetchall()
        assert rows == [(role, True, False, False, False, False, False) for role in sorted(PART_ROLES)]


@pytest.mark.req("PLAT.least-privilege")
def test_the_stack_writes_each_part_its_own_role(local_stack: Stack) -> None:
    import json

    written = json.loads(local_stack.settings_file.read_text())
    assert written["serving"]["db_user"] == SERVING_ROLE
    assert written["writer"]["db_user"] == WRITER_ROLE
    assert written["pipeline"]["db_user"] == PIPELINE_ROLE
    secrets = local_stack.layout.secrets
    for part, role in (("serving", SERVING_ROLE), ("writer", WRITER_ROLE), ("pipeline", PIPELINE_ROLE)):
        assert written[part]["db_passfile"] == str(secrets.pgpass(role))  # where its password is, not the password
    text = json.dumps(written)
    assert "password=" not in text
    assert not [p for p in secrets.all_passwords() if p in text]


@pytest.mark.req("PLAT.least-privilege")
def test_the_shard_map_holds_locations_and_each_part_connects_as_itself(settings) -> None:
    with psycopg.connect(settings.catalog_dsn or "") as conn:
        stored = [r[0] for r in conn.execute("SELECT dsn FROM tessera_shard_map").fetchall()]
    assert stored
    assert all(dsn == location_only(dsn) for dsn in stored)
    with FeatureStore.open(settings, prepare_topology=False, credentials=role_login(SERVING_ROLE)) as store:
        for dsn in store.shard_map.dsns:
            with psycopg.connect(dsn) as conn:
                assert conn.execute("SELECT current_user").fetchone()[0] == SERVING_ROLE


@pytest.mark.req("PLAT.least-privilege")
def test_serving_reads_features_and_the_registry_and_nothing_else(settings, written) -> None:
    feature_set, registry = written
    version = registry.register(
        "roles_model",
        algorithm="gbm",
        feature_set=feature_set,
        features=["x"],
        metrics={"auc": 0.7},
        artifact_path="/nonexistent/model.zip",
        genmodel_jar="/nonexistent/h2o-genmodel.jar",
    )
    registry.promote("roles_model", version.version)
    serving_catalog = as_role(settings.catalog_dsn or "", SERVING_ROLE)
    assert ModelRegistry(serving_catalog).current("roles_model").version == version.version
    with FeatureStore.open(settings, prepare_topology=False, credentials=role_login(SERVING_ROLE)) as store:
        result = store.get_features([f"r{i}" for i in range(20)], feature_set)
        assert len(result.records) == 20
        assert not result.failed
        shard_dsns = store.shard_map.dsns
    for dsn in shard_dsns:
        assert refused(
            dsn,
            "INSERT INTO entity_features (entity_id, feature_set, features, event_ts) VALUES ('x', 'y', '{}', now())",
        )
        assert refused(dsn, "UPDATE entity_features SET features = '{}' WHERE feature_set = %s", (feature_set,))
        assert refused(dsn, "DELETE FROM entity_features WHERE feature_set = %s", (feature_set,))
        assert refused(dsn, "SELECT * FROM tessera_shard_fence")
        assert refused(dsn, "SELECT * FROM tessera_schema_migrations")
        assert refused(dsn, "CREATE TABLE serving_was_here (id int)")
    assert refused(serving_catalog, "UPDATE model_aliases SET version = version")
    assert refused(serving_catalog, "SELECT * FROM model_promotions")
    assert refused(serving_catalog, "SELECT * FROM model_evaluations")
    assert refused(serving_catalog, "INSERT INTO tessera_shard_epochs (epoch, total_shards) VALUES (999, 1)")
    assert refused(serving_catalog, "CREATE TABLE serving_was_here (id int)")
    # API keys: serving reads the digests, never creates, revives or deletes a key.
    with psycopg.connect(serving_catalog) as conn:
        conn.execute("SELECT key_id, digest, scopes FROM tessera_api_keys").fetchall()
    assert refused(serving_catalog, "UPDATE tessera_api_keys SET revoked_at = NULL")
    assert refused(serving_catalog, "DELETE FROM tessera_api_keys")
    assert refused(
        serving_catalog, "INSERT INTO tessera_api_keys (key_id, name, digest, scopes) VALUES ('x', 'y', '', '{}')"
    )
    with psycopg.connect(settings.catalog_dsn or "") as conn:  # an orchestration table serving has no use for
        conn.execute("CREATE TABLE IF NOT EXISTS roles_probe_pipeline_only (id int)")
    assert refused(serving_catalog, "SELECT * FROM roles_probe_pipeline_only")


@pytest.mark.req("PLAT.least-privilege")
def test_the_writer_writes_features_but_cannot_change_the_schema_or_the_fence(settings, written) -> None:
    feature_set, _ = written
    with FeatureStore.open(settings, prepare_topology=False, credentials=role_login(WRITER_ROLE)) as store:
        assert store.get_features(["r1"], feature_set).records["r1"].features["x"] == 1
        shard_dsns = store.shard_map.dsns
    for dsn in shard_dsns:
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == WRITER_ROLE
        assert refused(dsn, "ALTER TABLE entity_features ADD COLUMN writer_was_here int")
        assert refused(dsn, "DROP TABLE entity_features")
        assert refused(dsn, "TRUNCATE entity_features")
        assert refused(dsn, "CREATE TABLE writer_was_here (id int)")
        assert refused(dsn, "CREATE INDEX writer_idx ON entity_features (written_at)")
        assert refused(dsn, "UPDATE tessera_shard_fence SET min_epoch = 0")
        assert refused(dsn, "DELETE FROM tessera_schema_migrations")
    writer_catalog = as_role(settings.catalog_dsn or "", WRITER_ROLE)
    assert refused(writer_catalog, "SELECT * FROM model_versions")
    assert refused(writer_catalog, "DELETE FROM tessera_shard_map")


@pytest.mark.req("PLAT.least-privilege")
def test_the_pipeline_creates_its_own_catalog_tables_but_cannot_alter_the_store(settings) -> None:
    pipeline_catalog = as_role(settings.catalog_dsn or "", PIPELINE_ROLE)
    table = f"pipeline_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pipeline_catalog) as conn:
        conn.execute(f"CREATE TABLE {table} (id int)")
        conn.execute(f"DROP TABLE {table}")
    assert refused(pipeline_catalog, "ALTER TABLE tessera_shard_map ADD COLUMN pipeline_was_here int")
    assert refused(pipeline_catalog, "DROP TABLE model_versions")
    # The lifecycle's records and the versions are append-only for the pipeline.
    assert refused(pipeline_catalog, "UPDATE model_promotions SET note = 'rewritten'")
    assert refused(pipeline_catalog, "DELETE FROM model_evaluations")
    assert refused(pipeline_catalog, "DELETE FROM model_versions")
    assert refused(pipeline_catalog, "UPDATE model_versions SET metrics = '{}'")
    for dsn in settings.shard_dsns():
        assert refused(as_role(dsn, PIPELINE_ROLE), "ALTER TABLE entity_features ADD COLUMN pipeline_was_here int")
        assert refused(as_role(dsn, PIPELINE_ROLE), "CREATE TABLE pipeline_was_here (id int)")


@pytest.mark.req("PLAT.least-privilege")
def test_the_schema_step_grants_again_every_time_it_runs(settings) -> None:
    """A grant lost (or a table created after the roles) is restored by the next ``apply_schema``."""
    dsn = settings.shard_dsns()[0]
    with psycopg.connect(dsn) as conn:
        conn.execute(f"REVOKE ALL ON entity_features FROM {SERVING_ROLE}")
    assert refused(as_role(dsn, SERVING_ROLE), "SELECT 1 FROM entity_features LIMIT 1")
    assert apply_schema(dsn) == []
    assert not refused(as_role(dsn, SERVING_ROLE), "SELECT 1 FROM entity_features LIMIT 1")


@pytest.mark.req("PLAT.least-privilege")
def test_every_table_a_migration_creates_has_a_grant_decision() -> None:
    created = {
        name
        for migration in MIGRATIONS
        for name in re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", migration.sql, flags=re.IGNORECASE)
    }
    assert created
    assert created <= set(SHARD_GRANTS), f"no grant decision for {created - set(SHARD_GRANTS)}"


@pytest.mark.req("PLAT.least-privilege")
def test_roles_and_grants_are_created_idempotently(local_stack: Stack, settings) -> None:
    def oids() -> list[tuple]:
        found = []
        for dsn in servers(settings):
            with psycopg.connect(dsn) as conn:
                found += conn.execute(
                    "SELECT rolname, oid FROM pg_roles WHERE rolname = ANY(%s) ORDER BY 1", (list(PART_ROLES),)
                ).fetchall()
        return found

    before_roles, before_grants = oids(), privilege_matrix(settings)
    local_stack.up()  # the whole bring-up again on running servers: roles, grants, schema
    for dsn in servers(settings):
        ensure_roles(dsn)
    prepare(settings.catalog_dsn or "", settings=settings)
    assert oids() == before_roles
    assert privilege_matrix(settings) == before_grants


@pytest.mark.req("PLAT.least-privilege")
def test_only_a_superuser_may_create_roles(settings) -> None:
    with pytest.raises(RoleSetupError, match="needs a superuser"):
        ensure_roles(as_role(settings.catalog_dsn or "", PIPELINE_ROLE))
    with pytest.raises(RoleSetupError, match="no such part role"):
        ensure_roles(settings.catalog_dsn or "", {"tessera_everything": "x"})


@pytest.fixture
def scram_server(local_stack: Stack, tmp_path) -> Iterator[PostgresServer]:
    """A server of the stack's kind (pg_hba asks every role for a SCRAM password), of the test's own: its
    serving role gets a password the stack's do not have."""
    state = local_stack.load_state()
    assert state is not None
    root = Path(state.pg_root)
    binaries = find_postgres(state.postgres["bin_dir"])  # the binaries the stack recorded it runs
    passfile = local_stack.layout.secrets.pgpass(SUPERUSER)
    name = f"scram-{uuid.uuid4().hex[:6]}"
    server = PostgresServer("scram", free_port(), root / name, binaries, state.user, passfile)
    server.init_from(root / "template")
    server.start()
    try:
        yield server
    finally:
        assert server.stop(), "scram server did not stop"
        shutil.rmtree(server.data_dir, ignore_errors=True)


@pytest.mark.req("PLAT.least-privilege")
def test_a_part_password_authenticates_with_scram_and_is_stored_hashed(
    scram_server: PostgresServer, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.settings import ServingSettings

    ensure_roles(scram_server.dsn("postgres"), {SERVING_ROLE: "correct horse"})
    with psycopg.connect(scram_server.dsn("postgres")) as conn:
        stored = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (SERVING_ROLE,)).fetchone()[0]
    assert stored.startswith("SCRAM-SHA-256$")
    assert "correct horse" not in stored
    location = location_only(scram_server.dsn("postgres"))

    monkeypatch.setenv("TESSERA_SETTINGS_FILE", str(tmp_path / "absent.json"))
    monkeypatch.setenv("TESSERA_SERVING__DB_USER", SERVING_ROLE)
    monkeypatch.setenv("TESSERA_SERVING__DB_PASSWORD", "correct horse")
    with psycopg.connect(with_credentials(location, ServingSettings().db_credentials())) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == SERVING_ROLE

    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{scram_server.port}:*:{SERVING_ROLE}:correct horse\n")
    passfile.chmod(0o600)
    monkeypatch.delenv("TESSERA_SERVING__DB_PASSWORD")
    monkeypatch.setenv("TESSERA_SERVING__DB_PASSFILE", str(passfile))
    with psycopg.connect(with_credentials(location, ServingSettings().db_credentials())) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == SERVING_ROLE

    for wrong in (DbCredentials(SERVING_ROLE, "wrong"), DbCredentials(SERVING_ROLE)):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(make_conninfo(with_credentials(location, wrong), passfile="/nonexistent"))


@pytest.mark.req("PLAT.least-privilege")
def test_roles_ensure_sets_the_passwords_of_the_control_settings_and_refuses_a_non_superuser(
    settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`shardctl roles ensure` (the k8s setup Job's command) on the session stack; as a part's role it is a
    one-line error."""
    from click.testing import CliRunner

    from shardctl.cli import main

    def verifiers(dsn: str) -> dict[str, str]:
        with psycopg.connect(dsn) as conn:
            query = "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY(%s)"
            return dict(conn.execute(query, (list(PART_ROLES),)).fetchall())

    monkeypatch.setenv("TESSERA_CONTROL__SERVING_PASSWORD", "from-a-secret")
    before = privilege_matrix(settings)
    stack_verifiers = {dsn: verifiers(dsn) for dsn in servers(settings)}
    done = CliRunner().invoke(main, ["roles", "ensure"])
    assert done.exit_code == 0, done.output
    assert "roles ready on the catalog and 2 servers" in done.output
    stack_passwords = StackSecrets.of(settings.data_dir)
    for dsn in servers(settings):
        now = verifiers(dsn)
        assert now[SERVING_ROLE].startswith("SCRAM-SHA-256$")
        assert now[SERVING_ROLE] != stack_verifiers[dsn][SERVING_ROLE]
        assert now[WRITER_ROLE] == stack_verifiers[dsn][WRITER_ROLE]  # no password given: the stack's kept
        ensure_roles(dsn, {SERVING_ROLE: stack_passwords.pg_password(SERVING_ROLE)})  # back to the stack's
    assert privilege_matrix(settings) == before

    monkeypatch.setenv("TESSERA_CONTROL__DB_USER", PIPELINE_ROLE)
    monkeypatch.setenv("TESSERA_CONTROL__DB_PASSFILE", str(stack_passwords.pgpass(PIPELINE_ROLE)))
    refused_run = CliRunner().invoke(main, ["roles", "ensure"])
    assert refused_run.exit_code == 1
    assert "needs a superuser" in refused_run.output
    assert "Traceback" not in refused_run.output
