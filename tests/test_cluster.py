"""Cluster configs (`python -m ray_xray.cluster check`) and multi-node runs on one machine."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
G5 = REPO / "cluster" / "g5.yaml"
LOCAL = REPO / "cluster" / "local.yaml"


def check(*files, args=()):
    p = subprocess.run(
        [sys.executable, "-m", "ray_xray.cluster", "check", *args, *map(str, files)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    return p.returncode, p.stdout + p.stderr


def g5_variant(tmp_path: Path, edit, name="variant.yaml") -> Path:
    config = yaml.safe_load(G5.read_text())
    edit(config)
    out = tmp_path / name
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def errors(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ": warning: " not in ln and " OK (" not in ln]


@pytest.mark.parametrize("path", [G5, LOCAL], ids=["g5", "local"])
def test_shipped_configs_pass(path):
    code, out = check(path)
    assert code == 0, out
    assert f"{path}: OK (" in out and not errors(out), out


def test_g5_reports_its_placeholders_as_a_warning():
    code, out = check(G5)
    assert code == 0 and "warning: " in out and "REPLACE_ME placeholder(s) left" in out, out


def _open_port(config, port, cidr="0.0.0.0/0"):
    config["provider"]["security_group"] = {
        "GroupName": "ray-xray-open",
        "IpPermissions": [
            {"FromPort": port, "ToPort": port, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": cidr}]}
        ],
    }


@pytest.mark.parametrize("port, name", [(6379, "GCS"), (8265, "dashboard")])
def test_public_ray_port_fails(tmp_path, port, name):
    code, out = check(g5_variant(tmp_path, lambda c: _open_port(c, port)))
    assert code == 1, out
    assert f"provider.security_group.IpPermissions[0] opens port {port} (Ray's {name}" in out, out
    assert "to 0.0.0.0/0: Ray's ports must not face the internet" in out


def test_open_ipv6_all_ports_on_a_node_type_fails(tmp_path):
    def edit(c):
        c["available_node_types"]["gpu_1x"]["node_config"]["NetworkInterfaces"] = [
            {"IpPermissions": [{"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}]}
        ]

    code, out = check(g5_variant(tmp_path, edit))
    assert code == 1 and "opens ports 0-65535" in out and "::/0" in out, out


def test_ssh_open_to_the_world_is_only_a_warning(tmp_path):
    code, out = check(g5_variant(tmp_path, lambda c: _open_port(c, 22)))
    assert code == 0, out
    assert "warning: provider.security_group.IpPermissions[0] opens SSH (22)" in out, out


def _set_storage(value):
    def edit(c):
        c["setup_commands"] = [
            cmd.replace("s3://REPLACE_ME_BUCKET/ray_xray", value) for cmd in c["setup_commands"]
        ]

    return edit


def test_local_storage_fails(tmp_path):
    code, out = check(g5_variant(tmp_path, _set_storage("/home/ubuntu/runs")))
    assert code == 1, out
    assert "RAY_XRAY_STORAGE=/home/ubuntu/runs is not remote storage" in out, out


def test_missing_storage_fails(tmp_path):
    def edit(c):
        c["setup_commands"] = [x for x in c["setup_commands"] if "RAY_XRAY_STORAGE" not in x]

    code, out = check(g5_variant(tmp_path, edit))
    assert code == 1 and "multi-node cluster without remote experiment storage" in out, out


def test_worker_without_iam_profile_fails(tmp_path):
    def edit(c):
        del c["available_node_types"]["gpu_1x_spot"]["node_config"]["IamInstanceProfile"]

    code, out = check(g5_variant(tmp_path, edit))
    assert code == 1, out
    assert errors(out) == [
        f"{tmp_path / 'variant.yaml'}: worker node type 'gpu_1x_spot' has no "
        "node_config.IamInstanceProfile (Arn or Name): its trials could not write checkpoints to S3"
    ], out


def test_fake_aws_key_fails_without_printing_it(tmp_path):
    key = "AKIA" + "ABCDEFGHIJKLMNOP"  # fake, split so this file never matches itself
    text = G5.read_text().replace(
        "initialization_commands: []", f"initialization_commands:\n  - export AWS_KEY={key}"
    )
    bad = tmp_path / "key.yaml"
    bad.write_text(text)
    code, out = check(bad)
    assert code == 1 and "holds an AWS access key id (AKIA...)" in out, out
    assert key not in out


def test_secret_key_and_wandb_key_fail(tmp_path):
    def edit(c):
        c["setup_commands"].append("echo 'aws_secret_access_key = abc' >> ~/.aws/credentials")
        c["setup_commands"].append("export WANDB_API_KEY=0123456789abcdef")

    code, out = check(g5_variant(tmp_path, edit))
    assert code == 1 and "aws_secret_access_key" in out and "W&B API key" in out, out


def test_no_ray_xray_install_fails(tmp_path):
    def edit(c):
        c["setup_commands"] = [x for x in c["setup_commands"] if "/home/ubuntu/ray_xray" not in x]

    code, out = check(g5_variant(tmp_path, edit))
    assert code == 1 and "do not install ray_xray on every node" in out, out


def test_no_gpu_workers_fails(tmp_path):
    def edit(c):
        for t in c["available_node_types"].values():
            t["resources"].pop("GPU", None)

    code, out = check(g5_variant(tmp_path, edit))
    assert code == 1 and "no worker node type declares GPUs" in out, out


def test_ray_schema_errors_are_one_line(tmp_path):
    code, out = check(g5_variant(tmp_path, lambda c: c.update(storage="s3://x")))
    assert code == 1, out
    assert len(out.strip().splitlines()) == 1, out
    assert "Ray schema (ray " in out and "'storage' was unexpected" in out, out


def test_unsafe_yaml_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("cluster_name: !!python/object/apply:os.system ['touch pwned']\n")
    code, out = check(bad)
    assert code == 1, out
    assert out.strip().splitlines() == [
        f"{bad}: refused by yaml.safe_load: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system' (line 1)"
    ], out
    assert not (REPO / "pwned").exists() and not (tmp_path / "pwned").exists()


def test_missing_file_and_multiple_files(tmp_path):
    code, out = check(LOCAL, tmp_path / "nope.yaml")
    assert code == 1, out
    assert f"{LOCAL}: OK (" in out and f"{tmp_path / 'nope.yaml'}: cannot read" in out, out


def test_help_explains_the_rules():
    p = subprocess.run(
        [sys.executable, "-m", "ray_xray.cluster", "check", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert p.returncode == 0 and "RAY_XRAY_STORAGE" in p.stdout and "safe_load" in p.stdout
    p = subprocess.run([sys.executable, "-m", "ray_xray.cluster"], capture_output=True, text=True)
    assert p.returncode == 2 and "check" in p.stderr


# ---------------------------------------------------------------- multi-node on one machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster():
    """A head with no CPU (like cluster/g5.yaml: the driver's node runs no trial work) and two
    1-CPU worker nodes, all on this machine."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(
        initialize_head=True,
        # The dashboard (Tune needs it to free early-stopped trials' resources) on a free
        # port: another Ray on this machine may hold 8265.
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": _free_port(),
        },
    )
    try:
        nodes = [c.add_node(num_cpus=1, object_store_memory=150 * 2**20) for _ in range(2)]
        c.wait_for_nodes()
        ray.init(
            address=c.address,
            logging_level="WARNING",
            log_to_driver=False,
            runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        )
        yield c, {n.node_id for n in nodes}
    finally:
        ray.shutdown()
        c.shutdown()


def _train_workers(address: str, class_name: str = "RayTrainWorker") -> dict[str, str]:
    """actor id -> node id of every actor of `class_name` this cluster has run (alive or
    dead): Ray Train's workers, or (ImplicitFunc) Tune's function trials."""
    from ray.util.state import list_actors

    actors = list_actors(
        address=address, filters=[("class_name", "=", class_name)], detail=True, limit=100
    )
    return {a.actor_id: a.node_id for a in actors}


@pytest.mark.slow_ray
def test_multi_node_ddp_and_sweep(cluster, tmp_path):
    import pandas as pd

    from ray_xray.config import TrainConfig
    from ray_xray.train.launch import make_trainer
    from ray_xray.tune.service import SweepOptions, run_sweep

    c, worker_nodes = cluster
    t0 = time.perf_counter()

    # (i) 2 DDP workers, 1 CPU each: the head has no CPU and each worker node only one, so the
    # two must run on the two worker nodes; the state API confirms it.
    cfg = TrainConfig(
        model="cnn_lstm",
        data="synthetic:chest3:10",
        img_size=32,
        epochs=1,
        num_workers=2,
        batch_size=8,
        precision="fp32",
        limit_per_split=32,
    )
    trainer = make_trainer(cfg, name="mn", storage=str(tmp_path / "ddp"), cpus_per_worker=1)
    result = trainer.fit()
    assert result.error is None, result.error
    m = result.metrics
    assert m["coverage_min"] == m["coverage_max"] == 1 and m["train_images_seen"] == 30, m
    ddp = _train_workers(c.address)
    assert sorted(ddp.values()) == sorted(worker_nodes), (ddp, worker_nodes)
    t_ddp = time.perf_counter() - t0

    # (ii) a smoke sweep of 2 one-CPU trials: at most one fits per worker node, both at once.
    opts = SweepOptions(
        space="cnn_lstm",
        smoke_test=True,
        trials=2,
        cpus_per_trial=1,
        storage=str(tmp_path / "sweep"),
        name="mn",
    )
    run_sweep(opts)
    table = pd.read_parquet(tmp_path / "sweep" / "mn" / "results.parquet")
    assert len(table) == 2 and set(table["status"]) == {"TERMINATED"}, table
    # Two one-worker trials run inline: each trial's own process holds its CPU, one per node.
    sweep = _train_workers(c.address, "ImplicitFunc")
    assert sorted(sweep.values()) == sorted(worker_nodes), (sweep, worker_nodes)
    print(f"multi-node: DDP {t_ddp:.0f}s, total {time.perf_counter() - t0:.0f}s", file=sys.stderr)
