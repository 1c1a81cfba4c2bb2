"""The deployment kit (deploy/) holds to the code: its images, commands, ports and variables are the ones the
code and Prefect define. Nothing of it runs here (no Docker engine, no cluster): the files are read as data."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import tomllib
from collections.abc import Iterator

import prefect.settings
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from prefect.cli.server import server_app
from pydantic import ValidationError
from starlette.testclient import TestClient

from deployments.stack import stack_environment
from fulfillment.settings import Settings, refuse_open_exposure
from gateway.app import create_app
from tests.deploy_kit import (
    APP_TARGET,
    DEPLOY,
    DOTENV,
    HELM_VALUES,
    K8S,
    KUSTOMIZATION,
    PREFECT_TARGET,
    ROOT,
    SECRETS,
    SERVICES,
    compose_command,
    compose_environment,
    compose_services,
    container_running,
    containers,
    depends_on,
    dockerfile,
    dockerignore_keeps,
    dotenv,
    flattened,
    host_port_path,
    objects,
    published_ports,
    service_target,
)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ARGS, STAGES = dockerfile()
APP_IMAGE = STAGES[APP_TARGET]
OPTIONS = {field.validation_alias for field in Settings.model_fields.values()}
OPTION_PREFIXES = ("OrderProcessing__", "InventoryService__", "PaymentService__", "ShippingService__", "EventGrid__")
PROCESSES = {"gateway", "deployments.worker", "deployments.servicebus_listener"}
A_REAL_KEY = "a-function-key-of-32-characters!"


def default(option: str):
    """An option's default, whatever the environment of the test run says."""
    return next(field.default for field in Settings.model_fields.values() if field.validation_alias == option)


SERVICE_BUS = default("OrderProcessing__ServiceBusConnectionName")
# Read by our code (fulfillment/adapters/servicebus.py, logs.py, telemetry.py) or by Python, not Settings options.
READ_BY_THE_CODE = {SERVICE_BUS, f"{SERVICE_BUS}__fullyQualifiedNamespace", f"{SERVICE_BUS}__clientId", "LOG_FORMAT",
                    "LOG_LEVEL", "PROMETHEUS_MULTIPROC_DIR", "DO_NOT_TRACK", "PYTHONPATH", "PYTHONUNBUFFERED",
                    "PYTHONDONTWRITEBYTECODE"}
# prefect-redis 0.3.0's RedisMessagingSettings (env prefix PREFECT_REDIS_MESSAGING_): it is not installed here,
# only in the prefect-server image.
PREFECT_REDIS_SETTINGS = {f"PREFECT_REDIS_MESSAGING_{name}" for name in ("URL", "HOST", "PORT", "DB", "USERNAME",
                                                                        "PASSWORD", "SSL")}
PREFECT_REDIS_MODULES = {"prefect_redis.messaging", "prefect_redis.ordering", "prefect_redis.lease_storage"}
# The keys of the prefect-server chart the values file may use: each checked against charts/prefect-server/
# values.yaml of PrefectHQ/prefect-helm at commit 75b0c2776ec08bb00e3cf29b8bf1a8a8c5daa3e1 (2026-08-18), and the
# values file merged into the chart's values validated against its values.schema.json. Check a new key there
# before adding it here.
CHART_KEYS = {
    "fullnameOverride", "global.prefect.image.repository", "global.prefect.image.prefectTag", "global.prefect.env",
    "server.replicaCount", "server.loggingLevel", "server.uiConfig.prefectUiApiUrl",
    "backgroundServices.runAsSeparateDeployment", "backgroundServices.replicaCount", "backgroundServices.loggingLevel",
    "backgroundServices.env", "backgroundServices.messaging.broker", "backgroundServices.messaging.cache",
    "backgroundServices.messaging.redis.host", "backgroundServices.messaging.redis.port",
    "backgroundServices.messaging.redis.ssl", "backgroundServices.messaging.redis.db",
    "backgroundServices.messaging.redis.existingSecret", "backgroundServices.messaging.redis.existingSecretPasswordKey",
    "backgroundServices.messaging.docket.existingSecret", "backgroundServices.messaging.docket.existingSecretKey",
    "migrations.enabled", "postgresql.enabled", "externalDatabase.existingSecret",
    "externalDatabase.connectionStringSecretKey", "redis.enabled", "service.port",
}
# What `order-saga up` gives every process (stack_environment) and the kit deliberately does not.
NOT_IN_THE_KIT = {
    # Processes in separate containers share no directory, and each container's first process has pid 1: their
    # files there would collide. Only the gateway's own worker processes share one (compose.yaml, a tmpfs).
    "PROMETHEUS_MULTIPROC_DIR",
}


def app_environments() -> Iterator[tuple[str, dict[str, str]]]:
    """Where an order-saga process runs, and its variables: the image's ENV under the compose or Kubernetes ones."""
    for name in compose_services(APP_TARGET):
        yield f"compose {name}", APP_IMAGE.environment() | compose_environment(name)
    for container in containers():
        yield f"k8s {container.deployment}", APP_IMAGE.environment() | container.environment()


def prefect_server_environments() -> Iterator[tuple[str, dict[str, str]]]:
    for name in compose_services(PREFECT_TARGET):
        yield f"compose {name}", compose_environment(name)


def helm_env(*sections: str) -> dict[str, str]:
    return {item["name"]: item["value"] for section in sections for item in section_of(HELM_VALUES, section)["env"]}


def section_of(values: dict, dotted: str) -> dict:
    for key in dotted.split("."):
        values = values[key]
    return values


def all_variable_names() -> set[str]:
    names = {name for _, env in [*app_environments(), *prefect_server_environments()] for name in env}
    return names | set(helm_env("global.prefect", "backgroundServices"))


def kit_commands() -> list[tuple[str, list[str]]]:
    commands = [(f"compose {name}", compose_command(name)) for name in SERVICES if service_target(name)]
    commands += [(f"k8s {container.deployment}", container.command) for container in containers()]
    return [*commands, ("Dockerfile CMD", APP_IMAGE.command())]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[TestClient]:
    """The gateway the kit runs, on SQLite in a temporary directory, with a Prefect that answers."""

    class ReachablePrefect:
        async def is_reachable(self) -> bool:
            return True

        async def aclose(self) -> None:
            pass

    settings = Settings(_env_file=None, data_dir=tmp_path_factory.mktemp("gateway"))
    with TestClient(create_app(settings, monitor=ReachablePrefect())) as client:
        yield client


def test_every_order_saga_variable_of_the_kit_is_an_option_of_the_settings():
    names = all_variable_names()
    assert {"OrderProcessing__ApiKeys", "OrderProcessing__GatewayPort", "ServiceBusConnection"} <= names
    assert "OrderProcessing__GatewayWorkers" in OPTIONS  # uvicorn processes of the gateway (being added on main)
    assert sorted(name for name in names if name.startswith(OPTION_PREFIXES) and name not in OPTIONS) == []


def test_every_other_variable_of_the_kit_is_one_the_code_or_prefect_reads():
    others = {name for name in all_variable_names() if not name.startswith(OPTION_PREFIXES)}
    prefect_names = {name for name in others if name.startswith("PREFECT_")}
    assert {"PREFECT_API_URL", "PREFECT_MESSAGING_BROKER", "PREFECT_REDIS_MESSAGING_HOST"} <= prefect_names
    assert sorted(name for name in prefect_names
                  if not hasattr(prefect.settings, name) and name not in PREFECT_REDIS_SETTINGS) == []
    assert sorted(others - prefect_names - READ_BY_THE_CODE) == []


def test_the_kit_runs_the_three_processes_of_order_saga_and_each_module_exists():
    modules = {label: command[2] for label, command in kit_commands() if command[:2] == ["python", "-m"]}
    assert {module for label, module in modules.items() if label.startswith("compose")} == PROCESSES
    assert {module for label, module in modules.items() if label.startswith("k8s")} == PROCESSES
    assert sorted(f"{label}: {module}" for label, module in modules.items()
                  if importlib.util.find_spec(module) is None) == []


def test_every_prefect_command_parses_with_prefects_own_cli():
    parsed = {}
    for label, command in kit_commands():
        if command[0] == "prefect":
            assert command[1] == "server", label
            function, bound, _ = server_app.parse_args(command[2:], exit_on_error=False, print_error=False)
            parsed[label] = (function.__name__, bound.arguments)
    assert parsed == {
        "compose prefect-migrate": ("upgrade", {"yes": True}),
        "compose prefect-api": ("start", {"host": "0.0.0.0", "port": 4200, "no_services": True, "workers": 2}),
        "compose prefect-services": ("start_services", {}),
    }


def test_the_gateway_listens_on_the_port_its_probes_service_and_healthcheck_use(gateway):
    paths = {route.path for route in gateway.app.routes}
    container = container_running("gateway")
    port = int(container.environment().get("OrderProcessing__GatewayPort", default("OrderProcessing__GatewayPort")))
    ports = {entry.get("name", entry["containerPort"]): entry["containerPort"] for entry in container.spec["ports"]}
    assert list(ports.values()) == [port]
    probes = {kind: container.spec[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
    assert {kind: (probe["path"], ports.get(probe["port"], probe["port"])) for kind, probe in probes.items()} == {
        "livenessProbe": ("/healthz", port), "readinessProbe": ("/readyz", port)}
    assert {"/healthz", "/readyz"} <= paths
    [service] = [service for service in objects("Service").values()
                 if service["spec"]["selector"] == container_labels(container.deployment)]
    assert [ports.get(entry["targetPort"], entry["targetPort"]) for entry in service["spec"]["ports"]] == [port]

    compose = compose_environment("gateway")
    compose_port = int(compose.get("OrderProcessing__GatewayPort", default("OrderProcessing__GatewayPort")))
    assert [container_port for _, _, container_port in published_ports("gateway")] == [compose_port]
    assert f"127.0.0.1:{compose_port}/healthz" in " ".join(SERVICES["gateway"]["healthcheck"]["test"])


def container_labels(deployment: str) -> dict:
    return objects("Deployment")[deployment]["spec"]["selector"]["matchLabels"]


def test_the_prefect_images_run_the_prefect_version_order_saga_pins():
    version, python = prefect.__version__, ARGS["PYTHON_VERSION"]
    [pinned] = [Requirement(dependency) for dependency in PYPROJECT["project"]["dependencies"]
                if Requirement(dependency).name == "prefect"]
    assert version in pinned.specifier
    tag = f"{version}-python{python}"
    assert STAGES[PREFECT_TARGET].base == f"prefecthq/prefect:{tag}"
    assert {SERVICES[name]["image"].rpartition(":")[2] for name in compose_services(PREFECT_TARGET)} == {tag}
    assert HELM_VALUES["global"]["prefect"]["image"]["prefectTag"] == tag
    # prefect-redis pinned in the image satisfies Prefect's own `redis` extra
    [redis_extra] = [Requirement(line) for line in importlib.metadata.requires("prefect")
                     if Requirement(line).name == "prefect-redis"]
    assert ARGS["PREFECT_REDIS_VERSION"] in redis_extra.specifier


def test_the_images_python_is_one_pyproject_allows():
    python = ARGS["PYTHON_VERSION"]
    assert python in SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert STAGES["wheels"].base == STAGES[APP_TARGET].base == f"python:{python}-slim"


def test_every_process_calls_the_prefect_api_where_the_kit_serves_it():
    [api] = [name for name in compose_services(PREFECT_TARGET) if compose_command(name)[1:3] == ["server", "start"]]
    command = compose_command(api)
    api_port = int(command[command.index("--port") + 1]) if "--port" in command else 4200
    for name in compose_services(APP_TARGET):
        assert host_port_path(compose_environment(name)["PREFECT_API_URL"]) == (api, api_port, "/api"), name
    chart_service = (HELM_VALUES["fullnameOverride"], HELM_VALUES["service"]["port"], "/api")
    for container in containers():
        assert host_port_path(container.environment()["PREFECT_API_URL"]) == chart_service, container.deployment


def test_the_prefect_server_uses_the_redis_and_postgres_of_the_compose_file():
    redis_command = compose_command("redis")
    redis_port = int(redis_command[redis_command.index("--port") + 1])
    postgres = compose_environment("postgres")
    for label, env in prefect_server_environments():
        assert {env[name] for name in ("PREFECT_MESSAGING_BROKER", "PREFECT_MESSAGING_CACHE",
                                       "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING",
                                       "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE")} <= PREFECT_REDIS_MODULES, label
        assert (env["PREFECT_REDIS_MESSAGING_HOST"], int(env["PREFECT_REDIS_MESSAGING_PORT"])) == ("redis", redis_port)
        docket_host, docket_port, docket_db = host_port_path(env["PREFECT_SERVER_DOCKET_URL"])
        assert (docket_host, docket_port) == ("redis", redis_port), label
        assert docket_db != f"/{env['PREFECT_REDIS_MESSAGING_DB']}", "Docket keeps a database of its own"
        database = env["PREFECT_API_DATABASE_CONNECTION_URL"]
        assert database == (f"postgresql+asyncpg://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
                            f"@postgres:5432/{postgres['POSTGRES_DB']}"), label
    helm_messaging = HELM_VALUES["backgroundServices"]["messaging"]
    assert {helm_messaging["broker"], helm_messaging["cache"]} <= PREFECT_REDIS_MODULES


def test_migrations_run_once_before_any_prefect_server_process_starts():
    [migrate] = [name for name in compose_services(PREFECT_TARGET) if compose_command(name)[1:4] ==
                 ["server", "database", "upgrade"]]
    assert SERVICES[migrate]["restart"] == "no"
    for name in compose_services(PREFECT_TARGET):
        if name != migrate:
            assert depends_on(name)[migrate]["condition"] == "service_completed_successfully", name
            assert compose_environment(name)["PREFECT_SERVER_DATABASE_MIGRATE_ON_START"] == "false", name
    # The chart migrates in a Job (a Helm hook) when the background services run apart, and only then.
    assert HELM_VALUES["backgroundServices"]["runAsSeparateDeployment"] is True
    assert HELM_VALUES["migrations"]["enabled"] is True


def test_the_executors_serve_the_work_pool_of_the_code_and_of_prefect_yaml():
    pools = {label: env["OrderProcessing__WorkPool"] for label, env in app_environments()}
    assert any(label.startswith("compose") for label in pools) and any(label.startswith("k8s") for label in pools)
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    assert set(pools.values()) == {default("OrderProcessing__WorkPool")} == {
        spec["work_pool"]["name"] for spec in deployments}


def test_keda_scales_listeners_and_executors_on_the_queue_the_listener_reads(gateway):
    scaled = objects("ScaledObject")
    worker, listener = container_running("deployments.worker"), container_running("deployments.servicebus_listener")
    assert {spec["spec"]["scaleTargetRef"]["name"] for spec in scaled.values()} == {worker.deployment,
                                                                                   listener.deployment}
    queue = default("OrderProcessing__OrdersQueue")
    authentications = objects("TriggerAuthentication")
    for name, spec in scaled.items():
        assert 1 <= spec["spec"]["minReplicaCount"] <= spec["spec"]["maxReplicaCount"], name
        [servicebus] = [trigger for trigger in spec["spec"]["triggers"] if trigger["type"] == "azure-servicebus"]
        assert servicebus["metadata"]["queueName"] == queue, name
        for ref in authentications[servicebus["authenticationRef"]["name"]]["spec"]["secretTargetRef"]:
            assert ref["key"] in SECRETS[ref["name"]], f"{name}: secret {ref['name']} lacks {ref['key']}"
    for container in (worker, listener):
        assert container.environment().get("OrderProcessing__OrdersQueue", queue) == queue

    # The executors' second trigger: the saga backlog in the gateway's /readyz, one saga per executor slot.
    [backlog] = [trigger["metadata"] for trigger in scaled[worker.deployment]["spec"]["triggers"]
                 if trigger["type"] == "metrics-api"]
    gateway_service = objects("Service")["order-saga-gateway"]
    assert host_port_path(backlog["url"]) == (
        f"order-saga-gateway.{KUSTOMIZATION['namespace']}.svc.cluster.local",
        gateway_service["spec"]["ports"][0]["port"], "/readyz")
    assert backlog["valueLocation"] in gateway.get("/readyz").json()
    assert int(backlog["targetValue"]) == int(worker.environment()["OrderProcessing__WorkerConcurrency"])


def test_the_service_bus_emulator_declares_the_queues_of_the_code():
    config = json.loads((DEPLOY / "servicebus-emulator" / "Config.json").read_text())
    [namespace] = config["UserConfig"]["Namespaces"]
    assert namespace["Name"] == "sbemulatorns"  # the only name the emulator accepts
    queues = {queue["Name"]: queue["Properties"] for queue in namespace["Queues"]}
    assert set(queues) == {default("OrderProcessing__OrdersQueue"), default("OrderProcessing__OrderFailuresQueue")}
    # A failure announcement is sent at least once, its message id the order id: the queue drops a repeat.
    assert queues[default("OrderProcessing__OrderFailuresQueue")]["RequiresDuplicateDetection"] is True
    assert "./servicebus-emulator/Config.json:/ServiceBus_Emulator/ConfigFiles/Config.json:ro" in SERVICES[
        "servicebus-emulator"]["volumes"]
    [emulator] = [value for name, value in dotenv(commented=True)
                  if name == "SERVICEBUS_CONNECTION" and "UseDevelopmentEmulator=true" in value]
    assert emulator.startswith("Endpoint=sb://servicebus-emulator;")


def test_every_compose_dependency_is_a_service_of_the_file():
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name in SERVICES:
        for dependency, spec in depends_on(name).items():
            assert dependency in SERVICES, f"{name} depends on {dependency}"
            assert spec["condition"] in conditions, name
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[dependency], f"{name} waits for {dependency} to be healthy"


def test_only_the_gateway_is_published_beyond_this_host_and_it_requires_a_key():
    beyond = {name for name in SERVICES for address, _, _ in published_ports(name) if address != "127.0.0.1"}
    assert beyond == {"gateway"}
    for placeholder in (DOTENV["ORDER_SAGA_API_KEYS"], SECRETS["order-saga"]["OrderProcessing__ApiKeys"]):
        with pytest.raises(ValidationError, match="at least 16 characters"):  # cannot be deployed by mistake
            Settings(_env_file=None, OrderProcessing__ApiKeys=placeholder)


def test_every_order_saga_container_starts_with_valid_settings():
    for label, env in app_environments():
        options = {name: value for name, value in env.items() if name in OPTIONS}
        if "OrderProcessing__ApiKeys" in options:
            options["OrderProcessing__ApiKeys"] = A_REAL_KEY
        settings = Settings(_env_file=None, **options)
        if label.endswith("gateway"):
            assert settings.gateway_host == "0.0.0.0", label
            refuse_open_exposure(settings)  # no SystemExit: authentication is configured


def test_the_kit_gives_each_process_the_environment_order_saga_up_gives_it():
    expected = stack_environment(Settings(_env_file=None))
    by_deployment = {"PREFECT_HOME", "PREFECT_API_URL", "PREFECT_UI_URL"}  # paths and addresses of each deployment
    server_names = {name for name in expected if name.startswith("PREFECT_SERVER_")}
    app_names = set(expected) - server_names - NOT_IN_THE_KIT
    for label, env in app_environments():
        assert sorted(app_names - set(env)) == [], label
        assert {name: env[name] for name in app_names - by_deployment} == {
            name: expected[name] for name in app_names - by_deployment}, label
    helm = helm_env("global.prefect", "backgroundServices") | {
        "PREFECT_SERVER_LOGGING_LEVEL": HELM_VALUES["backgroundServices"]["loggingLevel"]}
    for label, env in [*prefect_server_environments(), ("helm", helm)]:
        assert {name: env.get(name) for name in server_names} == {name: expected[name] for name in server_names}, label


def test_the_helm_values_use_only_keys_of_the_chart():
    assert sorted(flattened(HELM_VALUES) - CHART_KEYS) == []
    redis = HELM_VALUES["backgroundServices"]["messaging"]
    for secret, key in [(HELM_VALUES["externalDatabase"]["existingSecret"],
                         HELM_VALUES["externalDatabase"]["connectionStringSecretKey"]),
                        (redis["redis"]["existingSecret"], redis["redis"]["existingSecretPasswordKey"]),
                        (redis["docket"]["existingSecret"], redis["docket"]["existingSecretKey"])]:
        assert key in SECRETS[secret], f"secret.example.yaml: {secret} lacks {key}"


def test_kustomize_applies_every_manifest_with_the_app_image():
    manifests = sorted(path.name for path in K8S.glob("*.yaml")
                       if path.name != "kustomization.yaml" and not path.name.endswith(".example.yaml"))
    assert sorted(KUSTOMIZATION["resources"]) == manifests
    images = {image["name"] for image in KUSTOMIZATION["images"]}
    assert {container.spec["image"] for container in containers()} == images
    for container in containers():
        for source in container.spec.get("envFrom", []):
            if "secretRef" in source:
                assert source["secretRef"]["name"] in SECRETS, container.deployment


def test_the_image_holds_what_the_processes_read_and_the_context_lets_it_in():
    packages = {pattern.rstrip("*") for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = dict(APP_IMAGE.copied_from_context())
    # Everything but the benchmarks; and prefect.yaml beside the packages, where deployments/registration.py
    # looks for it and finds the flows by their entrypoints' paths.
    assert set(copied) == packages - {"benchmarks"} | {"prefect.yaml"}
    assert copied["prefect.yaml"] == "./" and all(copied[package] == f"./{package}" for package in packages & set(copied))
    assert APP_IMAGE.environment()["PYTHONPATH"] == APP_IMAGE.arguments("WORKDIR")[-1]
    # The data directory is the home of the image's user, and a volume wherever the kit runs the image.
    data_dir = APP_IMAGE.environment()["OrderProcessing__DataDir"]
    assert f"--home-dir {data_dir} " in " ".join(APP_IMAGE.arguments("RUN"))
    for name in compose_services(APP_TARGET):
        assert any(volume.endswith(f":{data_dir}") for volume in SERVICES[name]["volumes"]), name
    for container in containers():
        assert data_dir in {mount["mountPath"] for mount in container.spec["volumeMounts"]}, container.deployment
    context = [source for stage in STAGES.values() for source, _ in stage.copied_from_context()]
    assert sorted(source for source in context if not dockerignore_keeps(source)) == []
