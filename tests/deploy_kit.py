"""The deployment kit of deploy/ read as data, for tests that hold it to the code (it cannot run here: no Docker
engine, no cluster). The compose file as `docker compose` resolves it with a deploy/.env copied from
.env.example; the Kubernetes objects, with the environment each container gets; the Dockerfile's stages."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
APP_TARGET, PREFECT_TARGET = "app", "prefect-server"


# --- compose.yaml and .env.example ---------------------------------------------------------------------------

def dotenv(path: Path = DEPLOY / ".env.example", *, commented: bool = False) -> list[tuple[str, str]]:
    """The assignments of an env file; `commented`: those a `#` turns off (the examples of each profile)."""
    pattern = re.compile(r"^#(\w+)=(.*)$" if commented else r"^(\w+)=(.*)$")
    return [(m[1], m[2]) for line in path.read_text().splitlines() if (m := pattern.match(line.strip()))]


DOTENV = dict(dotenv())
_INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: object) -> str:
    """`${X}`, `${X:-default}`, `${X-default}`, `${X:?error}` as compose resolves them with .env.example."""

    def resolve(m: re.Match) -> str:
        name, op, arg = m["name"], m["op"], m["arg"]
        given = DOTENV.get(name)
        missing = not given if (op or ":").startswith(":") else given is None
        if not missing:
            return given
        if op and op.endswith("?"):
            raise AssertionError(f"compose refuses to start: {name} is not set in .env.example ({arg})")
        return arg if op else ""

    return _INTERPOLATION.sub(resolve, str(value))


COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]


def service_target(name: str) -> str | None:
    """The Dockerfile stage a service is built from: ours, or None for a third-party image."""
    return (SERVICES[name].get("build") or {}).get("target")


def compose_services(target: str) -> list[str]:
    return [name for name in SERVICES if service_target(name) == target]


def compose_environment(name: str) -> dict[str, str]:
    env = SERVICES[name].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: interpolate(value) for key, value in env.items()}


def compose_command(name: str) -> list[str]:
    command = SERVICES[name].get("command") or []
    return [interpolate(token) for token in (shlex.split(command) if isinstance(command, str) else command)]


def depends_on(name: str) -> dict[str, dict]:
    dependencies = SERVICES[name].get("depends_on") or {}
    if isinstance(dependencies, list):
        return {dependency: {"condition": "service_started"} for dependency in dependencies}
    return dependencies


def published_ports(name: str) -> list[tuple[str | None, int, int]]:
    """(host address or None for every interface, host port, container port) of each `ports` entry."""
    ports = []
    for entry in SERVICES[name].get("ports") or []:
        *address, host, container = interpolate(entry).split(":")
        ports.append((address[0] if address else None, int(host), int(container)))
    return ports


# --- Kubernetes ----------------------------------------------------------------------------------------------

K8S = DEPLOY / "k8s"
KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())


def k8s_objects(*files: str) -> list[dict]:
    return [doc for file in files for doc in yaml.safe_load_all((K8S / file).read_text()) if doc]


APPLIED = k8s_objects(*KUSTOMIZATION["resources"])  # what `kubectl apply -k deploy/k8s` creates
SECRETS = {doc["metadata"]["name"]: doc["stringData"] for doc in k8s_objects("secret.example.yaml")}


def objects(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in APPLIED if doc["kind"] == kind}


CONFIG_MAPS = {name: doc["data"] for name, doc in objects("ConfigMap").items()}


@dataclass(frozen=True)
class Container:
    deployment: str
    spec: dict

    @property
    def command(self) -> list[str]:
        return [*self.spec.get("command", []), *self.spec.get("args", [])]

    def environment(self) -> dict[str, str]:
        """Its variables and their values (a Secret's from secret.example.yaml), envFrom first as Kubernetes does."""
        env: dict[str, str] = {}
        for source in self.spec.get("envFrom", []):
            if "configMapRef" in source:
                env |= CONFIG_MAPS[source["configMapRef"]["name"]]
            else:
                env |= SECRETS[source["secretRef"]["name"]]
        return env | {item["name"]: item.get("value", "") for item in self.spec.get("env", [])}


def containers() -> Iterator[Container]:
    for name, deployment in objects("Deployment").items():
        for spec in deployment["spec"]["template"]["spec"]["containers"]:
            yield Container(name, spec)


def container_running(module: str) -> Container:
    return next(container for container in containers() if container.command[:3] == ["python", "-m", module])


# --- the Dockerfile ------------------------------------------------------------------------------------------

@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self, keyword: str) -> list[str]:
        return [rest for word, rest in self.instructions if word == keyword]

    def environment(self) -> dict[str, str]:
        return dict(item.split("=", 1) for rest in self.arguments("ENV") for item in shlex.split(rest))

    def copied_from_context(self) -> list[tuple[str, str]]:
        """(source, destination) of each COPY from the build context (not from another stage)."""
        pairs = []
        for rest in self.arguments("COPY"):
            *sources, destination = shlex.split(rest)
            flags = [source for source in sources if source.startswith("--")]
            if not any(flag.startswith("--from=") for flag in flags):
                pairs += [(source, destination) for source in sources if source not in flags]
        return pairs

    def command(self) -> list[str]:
        return json.loads(self.arguments("CMD")[-1])


def dockerfile(path: Path = DEPLOY / "Dockerfile") -> tuple[dict[str, str], dict[str, Stage]]:
    """The global ARG defaults and the stages by name, each FROM with its ARGs substituted."""
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage = None
    for line in path.read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word, rest = word.upper(), rest.strip()
        if word == "ARG" and stage is None:
            name, _, default = rest.partition("=")
            args[name] = default
        elif word == "FROM":
            base, _, name = rest.partition(" AS ")
            stage = stages[name.strip()] = Stage(re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], base.strip()))
        elif stage is not None:
            stage.instructions.append((word, rest))
    return args, stages


def dockerignore_keeps(path: str, ignore_file: Path = DEPLOY / "Dockerfile.dockerignore") -> bool:
    """Whether the build context holds `path`, for an ignore file that leaves out everything (`*`) and lets
    chosen files and folders back in (`!name`), the shape of Dockerfile.dockerignore."""
    patterns = [line.strip() for line in ignore_file.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "Dockerfile.dockerignore starts by leaving everything out"
    kept = [pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")]
    left_out = [pattern for pattern in patterns[1:] if not pattern.startswith("!")]
    path = path.rstrip("/")
    return (any(path == keep or path.startswith(f"{keep}/") for keep in kept)
            and not any(path == out or path.startswith(f"{out}/") for out in left_out))


# --- shared ----------------------------------------------------------------------------------------------

def host_port_path(url: str) -> tuple[str, int | None, str]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port, parts.path


def flattened(values: dict, prefix: str = "") -> set[str]:
    """The dotted paths of a YAML mapping's leaves (a list counts as a leaf)."""
    paths = set()
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        paths |= flattened(value, path) if isinstance(value, dict) and value else {path}
    return paths


HELM_VALUES = yaml.safe_load((DEPLOY / "helm" / "prefect-server-values.yaml").read_text())
