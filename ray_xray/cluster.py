"""`python -m ray_xray.cluster check FILE [FILE ...]`: offline checks of Ray cluster-launcher YAML.

Two layers, both without any cloud call:

1. Ray's own schema and defaults: `prepare_config` (merges the provider's defaults.yaml) then
   `validate_config` (ray-schema.json + cross-field checks), the same functions `ray up` runs.
   They are private Ray APIs (`ray.autoscaler._private.util`), checked with ray 2.60.0; if they
   move, `check` says so in one line instead of failing obscurely. For `fake_multinode` the
   defaults file is missing from the ray wheel, so the raw file is validated, which is what the
   autoscaler started by `ray start --autoscaling-config` does with it.
2. ray_xray's rules for a sweep cluster: remote experiment storage (RAY_XRAY_STORAGE), no Ray
   port open to the internet, IAM instance profiles on workers, ray_xray installed by the setup,
   GPU workers declared, and no credentials in the file.

Each problem is one line `FILE: problem` (warnings: `FILE: warning: ...`); exit code 1 if any
file has an error, 0 otherwise (one `FILE: OK ...` line per good file), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import re
import sys
from pathlib import Path

import yaml

RAY_CHECKED = "2.60.0"  # the Ray version these private APIs and rules were checked against
STORAGE_ENV = "RAY_XRAY_STORAGE"  # default --storage of `python -m ray_xray.tune` on the head
REMOTE_SCHEMES = ("s3://", "gs://")
FAKE_PROVIDERS = ("fake_multinode", "fake_multinode_docker")
OPEN_CIDRS = ("0.0.0.0/0", "::/0")
# Ports a default Ray cluster listens on, named in messages when an open rule covers them.
RAY_PORTS = {
    6379: "GCS",
    8265: "dashboard / job API",
    10001: "Ray client",
    8076: "object manager",
    52365: "dashboard agent",
    8080: "metrics export",
}
SETUP_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands")
PLACEHOLDER = "REPLACE_ME"

CREDENTIAL_PATTERNS = [
    (
        re.compile(r"aws_access_key_id\s*[:=]\s*\S", re.I),
        "an AWS access key id (aws_access_key_id)",
    ),
    (
        re.compile(r"aws_secret_access_key\s*[:=]\s*\S", re.I),
        "an AWS secret key (aws_secret_access_key)",
    ),
    (
        re.compile(r"aws_session_token\s*[:=]\s*\S", re.I),
        "an AWS session token (aws_session_token)",
    ),
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id (AKIA...)"),
    (
        re.compile(r"WANDB_API_KEY\s*[:=]\s*[\"']?[^\s\"'$]", re.I),
        "a W&B API key (WANDB_API_KEY=...)",
    ),
]


class Report:
    """What checking one cluster YAML found: errors (the file is refused) and warnings (it may
    work, but look), each a line naming the file."""

    def __init__(self, path: str):
        self.path = path
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, msg: str) -> None:
        """Record a problem that makes the file unusable (`check` then exits 1)."""
        self.errors.append(msg)

    def warn(self, msg: str) -> None:
        """Record something that may work but deserves a look (placeholders left, ...)."""
        self.warnings.append(msg)

    def lines(self) -> list[str]:
        """The findings as printed: `PATH: problem` per error, then `PATH: warning: ...` per
        warning."""
        return [f"{self.path}: {m}" for m in self.errors] + [
            f"{self.path}: warning: {m}" for m in self.warnings
        ]


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# ---------------------------------------------------------------- loading


def load(path: str, report: Report) -> tuple[dict | None, str]:
    """(the cluster config as a dict, the file's text) read with `yaml.safe_load`; (None, text) or
    (None, "") with an error in `report` when the file cannot be read, is not YAML, asks for
    Python objects, or is not a mapping."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        report.error(f"cannot read: {getattr(exc, 'strerror', None) or exc}")
        return None, ""
    try:
        config = yaml.safe_load(text)  # never yaml.load: no Python objects from a config file
    except yaml.constructor.ConstructorError as exc:
        mark = f" (line {exc.problem_mark.line + 1})" if exc.problem_mark else ""
        report.error(f"refused by yaml.safe_load: {_one_line(exc.problem)}{mark}")
        return None, text
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        report.error(f"not valid YAML: {_one_line(getattr(exc, 'problem', exc))}{where}")
        return None, text
    if not isinstance(config, dict):
        report.error("not a cluster config (the top level must be a mapping)")
        return None, text
    return config, text


# ---------------------------------------------------------------- Ray's schema


def ray_schema(config: dict, report: Report) -> dict | None:
    """Ray's prepare_config + validate_config; returns the config with Ray's defaults filled."""
    try:
        import jsonschema
        import ray
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as exc:
        report.error(
            f"cannot import Ray's config validator ({_one_line(exc)}); `check` uses the private "
            f"ray.autoscaler._private.util.prepare_config/validate_config, checked with ray "
            f"{RAY_CHECKED}: install ray[default]=={RAY_CHECKED} or update ray_xray/cluster.py"
        )
        return None
    # Ray's own INFO/WARN lines (e.g. "setting max workers", cli_logger's docker file-mount
    # notes, moot without docker) would break the one-line-per-problem output.
    logging.getLogger("ray.autoscaler").setLevel(logging.ERROR)
    provider = config.get("provider")
    if not isinstance(provider, dict) or "type" not in provider:
        report.error("Ray schema: 'provider' with a 'type' is required")
        return None
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            if provider["type"] in FAKE_PROVIDERS:
                # prepare_config would read fake_multi_node/example.yaml, absent from the ray
                # wheel; `ray start --autoscaling-config` validates the raw file the same way.
                prepared = copy.deepcopy(config)
            else:
                prepared = prepare_config(copy.deepcopy(config))
            validate_config(prepared)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "top level"
        report.error(f"Ray schema (ray {ray.__version__}): {_one_line(exc.message)} at {where}")
        return None
    except NotImplementedError as exc:  # unknown provider type
        report.error(f"Ray schema: {_one_line(exc)}")
        return None
    except (ValueError, RuntimeError, KeyError, TypeError, AssertionError, OSError) as exc:
        report.error(
            f"Ray config check (ray {ray.__version__}): {_one_line(exc) or type(exc).__name__}"
        )
        return None
    return prepared


# ---------------------------------------------------------------- our rules


def _node_types(config: dict) -> dict:
    types = config.get("available_node_types") or {}
    return {k: v for k, v in types.items() if isinstance(v, dict)}


def _worker_types(config: dict) -> dict:
    head = config.get("head_node_type")
    return {k: v for k, v in _node_types(config).items() if k != head}


def _commands(config: dict, keys) -> list[str]:
    out = []
    for key in keys:
        out += [str(c) for c in config.get(key) or []]
    return out


def is_multi_node(config: dict) -> bool:
    """Whether the cluster can have worker nodes: a `max_workers` above 0, globally or for any
    worker node type."""
    if (config.get("max_workers") or 0) > 0:
        return True
    return any((t.get("max_workers") or 0) > 0 for t in _worker_types(config).values())


def check_storage(config: dict, report: Report) -> None:
    """(a) A multi-node sweep must write to shared remote storage, set on the head."""
    if not is_multi_node(config):
        return
    pattern = re.compile(rf"\b{STORAGE_ENV}=[\"']?([^\s\"';&|]*)")
    on_head = [v for c in _commands(config, SETUP_KEYS) for v in pattern.findall(c)]
    elsewhere = [
        v
        for c in _commands(config, ("worker_setup_commands",))
        + [
            str(c)
            for t in _node_types(config).values()
            for c in t.get("worker_setup_commands") or []
        ]
        for v in pattern.findall(c)
    ]
    for value in on_head + elsewhere:
        if not value.startswith(REMOTE_SCHEMES):
            report.error(
                f"{STORAGE_ENV}={value or '(empty)'} is not remote storage: on a multi-node "
                f"cluster trials on other nodes cannot write there; use s3://BUCKET/prefix or "
                f"gs://BUCKET/prefix"
            )
    if not on_head:
        hint = " (it is only in worker_setup_commands)" if elsewhere else ""
        report.error(
            f"multi-node cluster without remote experiment storage{hint}: export "
            f"{STORAGE_ENV}=s3://BUCKET/prefix in setup_commands (persist it in ~/.bashrc); the "
            f"sweep driver on the head uses it as its default --storage"
        )


def _permissions(obj, where: str = ""):
    """Every IpPermissions entry anywhere in the config, with its location."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            here = f"{where}.{key}" if where else str(key)
            if key == "IpPermissions" and isinstance(value, list):
                for i, perm in enumerate(value):
                    if isinstance(perm, dict):
                        yield f"{here}[{i}]", perm
            else:
                yield from _permissions(value, here)
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _permissions(value, f"{where}[{i}]")


def check_security(config: dict, report: Report) -> None:
    """(b) No Ray port open to the internet; SSH open to the world is only a warning."""
    for where, perm in _permissions(config):
        cidrs = [r.get("CidrIp") for r in perm.get("IpRanges") or [] if isinstance(r, dict)]
        cidrs += [r.get("CidrIpv6") for r in perm.get("Ipv6Ranges") or [] if isinstance(r, dict)]
        open_to = [c for c in cidrs if c in OPEN_CIDRS]
        if not open_to:
            continue
        proto = str(perm.get("IpProtocol", "-1"))
        lo, hi = perm.get("FromPort", -1), perm.get("ToPort", -1)
        if proto in ("-1", "all") or lo in (-1, None):
            lo, hi = 0, 65535
        hi = lo if hi in (-1, None) else hi
        if lo == hi == 22:
            report.warn(
                f"{where} opens SSH (22) to {open_to[0]}: prefer your own IP/32 "
                f"(cluster/README.md, 'Hardening SSH')"
            )
            continue
        if lo == hi:
            what = f"port {lo}" + (f" (Ray's {RAY_PORTS[lo]})" if lo in RAY_PORTS else "")
        else:
            named = [f"{p} ({n})" for p, n in RAY_PORTS.items() if lo <= p <= hi]
            what = f"ports {lo}-{hi}" + (f", including Ray's {', '.join(named)}," if named else "")
        report.error(
            f"{where} opens {what} to {open_to[0]}: Ray's ports must not face the internet; keep them "
            f"inside the security group and use `ray dashboard` (SSH tunnel)"
        )
    for cmd in _commands(config, ("head_start_ray_commands",)):
        if re.search(r"--dashboard-host[= ]+0\.0\.0\.0", cmd):
            report.warn(
                "head_start_ray_commands bind the dashboard to 0.0.0.0: use "
                "--dashboard-host=127.0.0.1 and reach it with `ray dashboard FILE`"
            )


def check_iam(config: dict, report: Report) -> None:
    """(c) Workers write checkpoints to S3 themselves: each AWS node type needs a profile."""
    head = config.get("head_node_type")
    for name, node_type in _node_types(config).items():
        profile = (node_type.get("node_config") or {}).get("IamInstanceProfile")
        ok = isinstance(profile, dict) and (profile.get("Arn") or profile.get("Name"))
        if ok:
            continue
        if name == head:
            report.warn(
                f"head node type {name!r} has no IamInstanceProfile: Ray creates "
                f"ray-autoscaler-v1 (full EC2 + S3 access); prefer your own, narrower profile"
            )
        else:
            report.error(
                f"worker node type {name!r} has no node_config.IamInstanceProfile (Arn or Name): "
                f"its trials could not write checkpoints to S3"
            )


def check_setup(config: dict, report: Report) -> None:
    """(d) Every node installs ray_xray (by name, URL or a mounted checkout); Ray is pinned."""
    mounts = [str(k).rstrip("/") for k in (config.get("file_mounts") or {})]
    pip = re.compile(r"\bpip3?\s+install\b")

    def installs(cmds: list[str]) -> bool:
        for cmd in cmds:
            for part in re.split(r"&&|;|\|\|", cmd):
                if pip.search(part) and (
                    "ray_xray" in part or any(m and m in part for m in mounts)
                ):
                    return True
        return False

    common = _commands(config, ("setup_commands",))
    head = _commands(config, ("head_setup_commands",))
    worker = _commands(config, ("worker_setup_commands",))
    if not (installs(common) or (installs(head) and installs(worker))):
        report.error(
            "setup_commands do not install ray_xray on every node: add e.g. `pip install -e "
            "/home/ubuntu/ray_xray` with the checkout in file_mounts (or a pinned git URL)"
        )
    pins = re.findall(r"\bray(?:\[[^\]]*\])?==([0-9][^\s\"']*)", " ".join(common + head + worker))
    if not pins:
        report.warn(f"setup does not pin Ray (e.g. ray[default]=={RAY_CHECKED})")
    else:
        try:
            import ray

            if any(p != ray.__version__ for p in pins):
                report.warn(
                    f"nodes pin ray=={pins[0]} but this machine runs ray {ray.__version__}: "
                    f"`ray up` needs the same version on both sides"
                )
        except ImportError:
            pass


def check_gpu(config: dict, report: Report) -> None:
    """(e) A GPU cluster config declares GPUs on at least one worker type."""
    gpus = [
        name
        for name, t in _worker_types(config).items()
        if ((t.get("resources") or {}).get("GPU") or 0) > 0
    ]
    if not gpus:
        report.error(
            "no worker node type declares GPUs (resources: {CPU: N, GPU: M}): "
            "GPU trials (--gpus-per-trial) would never be scheduled"
        )


def check_credentials(text: str, report: Report) -> None:
    """(f) No secrets in the file, comments included. The secret itself is never printed."""
    for lineno, line in enumerate(text.splitlines(), 1):
        for pattern, what in CREDENTIAL_PATTERNS:
            if pattern.search(line):
                report.error(
                    f"line {lineno} holds {what}: never put credentials in a cluster config; "
                    f"use IAM instance profiles (and WANDB_API_KEY from your environment)"
                )
                break


def check_placeholders(text: str, report: Report) -> None:
    """Warn when PLACEHOLDER values are left in the file (with the first line that has one)."""
    count = text.count(PLACEHOLDER)
    if count:
        first = next(i for i, ln in enumerate(text.splitlines(), 1) if PLACEHOLDER in ln)
        report.warn(
            f"{count} {PLACEHOLDER} placeholder(s) left (first on line {first}): "
            f"fill them in before `ray up`"
        )


def check_file(path: str, schema: bool = True) -> Report:
    """Every check of one cluster YAML: credentials in the text, Ray's own schema (unless
    `schema` is False), our security rules, and on real providers shared storage, the setup
    commands, GPUs and (AWS) IAM profiles; placeholders last. Returns the `Report`."""
    report = Report(path)
    config, text = load(path, report)
    if text:
        check_credentials(text, report)
    if config is None:
        return report
    if schema and ray_schema(config, report) is None:
        return report
    provider = str((config.get("provider") or {}).get("type"))
    check_security(config, report)
    if provider not in FAKE_PROVIDERS:
        # Fake nodes share this machine's disk and Python environment: no storage, setup,
        # GPU or IAM needed there.
        check_storage(config, report)
        check_setup(config, report)
        check_gpu(config, report)
        if provider == "aws":
            check_iam(config, report)
    check_placeholders(text, report)
    return report


def summary(config_path: str) -> str:
    """One line about a config that passed: provider, worker types, the most workers and GPUs."""
    with open(config_path) as f:
        config = yaml.safe_load(f)
    workers = _worker_types(config)
    gpus = sum(
        ((t.get("resources") or {}).get("GPU") or 0) * (t.get("max_workers") or 0)
        for t in workers.values()
    )
    provider = (config.get("provider") or {}).get("type")
    return (
        f"provider {provider}, {len(workers)} worker type(s), up to {config.get('max_workers', 0)}"
        f" workers{f' / {gpus:g} GPUs' if gpus else ''}"
    )


# ---------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The `cluster` command's parser, with its one sub-command `check FILE...`."""
    from .cli import HelpFormatter

    p = argparse.ArgumentParser(
        prog="python -m ray_xray.cluster",
        formatter_class=HelpFormatter,
        description="Tools for running ray_xray on a Ray cluster (cluster/README.md).",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    c = sub.add_parser(
        "check",
        formatter_class=HelpFormatter,
        help="validate cluster-launcher YAML files offline",
        description=(
            "Validate Ray cluster-launcher YAML files offline (no cloud call, no credentials). "
            "First Ray's own schema: prepare_config + validate_config, as `ray up` runs them "
            f"(private Ray API, checked with ray {RAY_CHECKED}). Then ray_xray's rules: "
            f"(a) a multi-node cluster exports {STORAGE_ENV}=s3://... or gs://... in "
            "setup_commands (the sweep's default storage on the head); (b) no security-group rule "
            "opens a port other than SSH to 0.0.0.0/0 or ::/0 (SSH open to the world: warning); "
            "(c) every AWS worker node type has an IamInstanceProfile; (d) setup_commands pip-"
            "install ray_xray on every node; (e) at least one worker type declares GPUs; (f) no "
            "AWS keys or WANDB_API_KEY values in the file. (c), (d), (e) and (a) are skipped for "
            "the fake_multinode provider. YAML is read with yaml.safe_load only."
        ),
        epilog=(
            "Output: one line per problem, 'FILE: problem' (warnings: 'FILE: warning: ...'), "
            "or 'FILE: OK ...'. Exit code 0 when no file has an error, 1 otherwise."
        ),
    )
    c.add_argument("files", nargs="+", metavar="FILE", help="cluster YAML file(s)")
    c.add_argument(
        "--no-ray-schema",
        action="store_true",
        help="skip Ray's schema (only ray_xray's rules), e.g. without ray installed",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """The `cluster` command: `check` prints each file's findings, or `OK (summary)`. Returns 0
    when every file passed, 1 when one has errors, 2 without a sub-command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "check":
        parser.print_help(sys.stderr)
        return 2
    failed = False
    for path in args.files:
        report = check_file(path, schema=not args.no_ray_schema)
        for line in report.lines():
            print(line)
        if report.errors:
            failed = True
        else:
            note = f", {len(report.warnings)} warning(s)" if report.warnings else ""
            print(f"{path}: OK ({summary(path)}{note})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
