"""The DAGs in a real Airflow 3: they import, have the intended shape, render the intended pods,
and the pipeline runs end to end with the local launcher on the synthetic demo corpus.

Skipped where Airflow (the ``airflow`` extra) is not installed. AIRFLOW_HOME is a fresh folder
per test session; ``airflow db migrate`` runs once (its time is printed).
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_HOME = tempfile.mkdtemp(prefix="ser-jax-airflow-")
# Airflow reads its configuration when first imported: set it before that.
os.environ.update(AIRFLOW_HOME=_HOME, AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
                  AIRFLOW__CORE__LOAD_EXAMPLES="False", SER_JAX_DAG_RETRY_DELAY_S="1")
pytest.importorskip("airflow.sdk")
pytest.importorskip("airflow.providers.cncf.kubernetes")
pytest.importorskip("airflow.providers.google")

from airflow.sdk import TriggerRule  # noqa: E402
from kubernetes.client import models as k8s  # noqa: E402

from ser_jax_dag import launchers, pods  # noqa: E402
from ser_jax_dag.params import RunParams  # noqa: E402

PIPELINE_TASKS = {"plan": set(), "features": {"plan"}, "merge_features": {"features"},
                  "tune_workers": {"merge_features"}, "tune": {"merge_features", "tune_workers"},
                  "train": {"tune"}, "evaluate": {"train"}, "gate": {"evaluate"},
                  "publish": {"gate"}}
ENV = pods.Environment(namespace="ml", service_account="ser-jax-ksa",
                       images=(("cpu", "reg/ser-jax:cpu-1"), ("gpu", "reg/ser-jax:gpu-1"),
                               ("tpu", "reg/ser-jax:tpu-1")),
                       project="proj", location="us-central1", cluster="train")


@pytest.fixture(scope="session")
def dagbag():
    """Migrates the metadata database once, then parses dags/."""
    tick = time.perf_counter()
    subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
                   check=True, capture_output=True, env=os.environ.copy())
    print(f"\nairflow db migrate: {time.perf_counter() - tick:.1f} s")
    from airflow.dag_processing.dagbag import DagBag
    return DagBag(dag_folder=str(REPO / "dags"))


def test_dag_folder_imports_and_pipeline_shape(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == {"ser_jax_pipeline", "ser_jax_monitor"}
    dag = dagbag.dags["ser_jax_pipeline"]
    assert {t.task_id: set(t.upstream_task_ids) for t in dag.tasks} == PIPELINE_TASKS
    mapped = {t.task_id for t in dag.tasks if getattr(t, "is_mapped", False)}
    assert mapped == {"features", "tune"}
    assert dag.schedule is None and dag.catchup is False
    assert dag.task_dict["train"].trigger_rule == TriggerRule.NONE_FAILED  # runs if tune skips
    for task_id in ("features", "merge_features", "tune", "train", "evaluate"):
        task = dag.task_dict[task_id]
        kwargs = getattr(task, "partial_kwargs", None) or vars(task)
        assert kwargs["retries"] == 3 and kwargs["retry_exponential_backoff"] == 2.0
        assert kwargs["execution_timeout"] is not None
    assert dag.task_dict["gate"].retries == 0
    assert set(dag.params.keys()) == {f.name for f in
                                      __import__("dataclasses").fields(RunParams)}

    monitor = dagbag.dags["ser_jax_monitor"]
    assert monitor.catchup is False and monitor.schedule == "0 6 * * *"
    assert {t.task_id: set(t.upstream_task_ids) for t in monitor.tasks} == {
        "check_drift": set(), "trigger_pipeline": {"check_drift"}}
    assert monitor.task_dict["trigger_pipeline"].trigger_dag_id == "ser_jax_pipeline"


def _params(**values) -> RunParams:
    return RunParams.from_dict({"root": "gs://bucket/ser", **values})


def _env(pod: k8s.V1Pod) -> dict:
    container = pod.spec.containers[0]
    return {e.name: e.value if e.value is not None else e.value_from for e in container.env}


HARDWARE = {
    "cpu": dict(hardware="cpu"),
    "gpu": dict(hardware="gpu", accelerator="nvidia-l4", accelerator_count=2),
    "tpu": dict(hardware="tpu", accelerator="tpu-v5-lite-podslice", tpu_topology="2x2",
                accelerator_count=4),
}


@pytest.mark.parametrize("launcher", ["gke", "kubernetes"])
@pytest.mark.parametrize("hardware", ["cpu", "gpu", "tpu"])
def test_rendered_train_pod(launcher, hardware):
    from airflow.providers.google.cloud.operators.kubernetes_engine import GKEStartPodOperator
    params = _params(launcher=launcher, **HARDWARE[hardware])
    command = launchers.stage_command(params, "r1", "train", None, "python")
    operator = launchers.pod_operator(launcher, pods.pod_spec(params, ENV, "train", "r1", command),
                                      ENV, "train")
    assert isinstance(operator, GKEStartPodOperator) == (launcher == "gke")
    if launcher == "gke":
        assert (operator.project_id, operator.location, operator.cluster_name) == (
            "proj", "us-central1", "train")
    assert operator.on_finish_action.value == "delete_succeeded_pod" and operator.get_logs
    pod = operator.build_pod_request_obj(dry_run=True)
    container = pod.spec.containers[0]
    assert container.image == f"reg/ser-jax:{hardware}-1"
    assert container.command == ["python", "-m", "ser_jax.main", "--config=configs/default.py",
                                 "--workdir=gs://bucket/ser/runs/r1", "--stage=train"]
    assert pod.metadata.namespace == "ml" and pod.spec.service_account_name == "ser-jax-ksa"
    assert _env(pod)["SER_JAX_RUN"] == "r1"
    limits, selector = container.resources.limits, pod.spec.node_selector or {}
    tolerations = [(t.key, t.operator, t.effect) for t in pod.spec.tolerations or []]
    assert container.resources.requests["cpu"] == "4" and limits["memory"] == "16Gi"
    if hardware == "cpu":
        assert set(limits) == {"memory"} and selector == {} and tolerations == []
    elif hardware == "gpu":
        assert limits["nvidia.com/gpu"] == "2"
        assert selector == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
        assert tolerations == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    else:
        assert limits["google.com/tpu"] == "4"
        assert selector == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
                            "cloud.google.com/gke-tpu-topology": "2x2"}
        assert tolerations == [("google.com/tpu", "Exists", "NoSchedule")]


@pytest.mark.parametrize("launcher", ["gke", "kubernetes"])
def test_rendered_features_and_tune_pods(launcher):
    params = _params(launcher=launcher, shards=4, tune_workers=2, tune_trials=8,
                     **HARDWARE["gpu"])
    command = launchers.stage_command(params, "r1", "features", 3, "python")
    pod = launchers.pod_operator(launcher, pods.pod_spec(params, ENV, "features", "r1", command,
                                                         3), ENV, "features"
                                 ).build_pod_request_obj(dry_run=True)
    assert pod.spec.containers[0].image == "reg/ser-jax:cpu-1"
    assert pod.spec.containers[0].command[-2:] == ["--config.data.shard=3",
                                                   "--config.data.num_shards=4"]
    assert not pod.spec.node_selector and not pod.spec.tolerations

    command = launchers.stage_command(params, "r1", "tune", None, "python")
    pod = launchers.pod_operator(launcher, pods.pod_spec(params, ENV, "tune", "r1", command),
                                 ENV, "tune").build_pod_request_obj(dry_run=True)
    assert "--config.tune.storage=$(OPTUNA_STORAGE)" in pod.spec.containers[0].command
    secret = _env(pod)["OPTUNA_STORAGE"].secret_key_ref
    assert (secret.name, secret.key) == ("ser-jax-optuna", "url")
    assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "2"


def test_rendered_tpu_slice_job(tmp_path, monkeypatch):
    """The multi-host slice: an indexed Job of N pods, all at once, with jax.distributed's env.
    Rendering a Job needs a kube config to exist (none is contacted)."""
    from airflow.providers.cncf.kubernetes.operators.job import KubernetesJobOperator
    from airflow.providers.google.cloud.operators.kubernetes_engine import GKEStartJobOperator
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "x"}}]}))
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps(
        {"conn_type": "kubernetes", "extra": {"kube_config_path": str(kubeconfig)}}))
    params = _params(launcher="kubernetes", hardware="tpu", accelerator="tpu-v5p-slice",
                     tpu_topology="2x2x4", accelerator_count=4, tpu_hosts=4)
    command = launchers.stage_command(params, "r1", "train", None, "python")
    job = pods.slice_job(params, ENV, "train", "r1", command)
    gke = launchers.slice_operator("gke", job, ENV, "train")
    assert isinstance(gke, GKEStartJobOperator)
    assert (gke.completions, gke.parallelism, gke.completion_mode) == (4, 4, "Indexed")
    operator = launchers.slice_operator("kubernetes", job, ENV, "train")
    assert isinstance(operator, KubernetesJobOperator)
    v1job = operator.build_job_request_obj()
    assert v1job.metadata.name == "job-sj-train-r1" == job.job_name
    assert (v1job.spec.completions, v1job.spec.parallelism, v1job.spec.completion_mode) == (
        4, 4, "Indexed")
    pod = v1job.spec.template
    assert pod.spec.subdomain == "sj-train-r1"
    env = {e.name: e for e in pod.spec.containers[0].env}
    assert env["JAX_COORDINATOR_ADDRESS"].value == "job-sj-train-r1-0.sj-train-r1:8476"
    assert env["JAX_NUM_PROCESSES"].value == "4"
    assert env["JAX_PROCESS_ID"].value_from.field_ref.field_path == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']")
    assert pod.spec.containers[0].resources.limits["google.com/tpu"] == "4"
    assert pod.spec.node_selector["cloud.google.com/gke-tpu-topology"] == "2x2x4"


# ---------------------------------------------------------------- end to end, local launcher

FLAKY_PYTHON = """#!{python}
# Runs ser_jax like the real interpreter, but fails the first train attempt; logs each call.
import json, os, sys
from pathlib import Path
log = Path({log!r})
stage = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--stage="))
workdir = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--workdir="))
manifest = Path(workdir, "features", "manifest.json")
with log.open("a") as handle:
    handle.write(json.dumps({{"stage": stage, "manifest_mtime_ns":
                             manifest.stat().st_mtime_ns if manifest.exists() else None}}) + "\\n")
if stage == "train" and sum(1 for line in log.open() if '"train"' in line) == 1:
    sys.exit("injected failure: first train attempt")
os.execv({python!r}, [{python!r}, *sys.argv[1:]])
"""


@pytest.fixture(scope="module")
def pipeline_root(dagbag, tmp_path_factory):
    """A root with one published run (run A), made by a full local run of the pipeline DAG."""
    saved = os.environ.get("PYTHONPATH")
    # The local launcher's subprocesses must import this checkout's ser_jax.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), saved]))
    root = tmp_path_factory.mktemp("root")
    tick = time.perf_counter()
    run = dagbag.dags["ser_jax_pipeline"].test(run_conf=_conf(root, tmp_path_factory, 0.0))
    print(f"\npipeline run A: {time.perf_counter() - tick:.1f} s")
    yield root, run
    if saved is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = saved


def _conf(root: Path, factory, threshold: float, **extra) -> dict:
    cache = factory.getbasetemp() / "xla-cache"
    return {"launcher": "local", "root": str(root), "config": "configs/quick.py",
            "local_repo": str(REPO), "threshold": threshold,
            "config_overrides": [  # the quick config with a narrower model and 2 epochs
                "--config.model.filters=8", "--config.train.epochs=2",
                f"--config.compilation_cache_dir={cache}"],
            **extra}


def _run_name(dag_run) -> str:
    from ser_jax_dag.params import run_name_from_run_id
    return run_name_from_run_id(dag_run.run_id)


def test_pipeline_publishes_a_model(pipeline_root):
    root, run = pipeline_root
    assert run.state == "success"
    name = _run_name(run)
    pointer = json.loads((root / "models" / "current").read_text())
    assert pointer["run"] == name
    version = root / "models" / name
    metadata = json.loads((version / "metadata.json").read_text())
    manifest = json.loads((root / "runs" / name / "features" / "manifest.json").read_text())
    assert metadata["data_fingerprint"] == manifest["fingerprint"]
    assert metadata["code_version"].startswith("git:")
    assert metadata["metrics"]["balanced_accuracy"] == json.loads(
        (root / "runs" / name / "evaluation" / "metrics.json").read_text())["balanced_accuracy"]
    assert {p.name for p in (version / "bundle").iterdir()} >= {"variables.msgpack",
                                                               "config.json", "labels.json"}
    assert (version / "config.json").exists() and (version / "metrics.json").exists()


def test_train_retry_reuses_features_and_gate_keeps_the_champion(dagbag, pipeline_root,
                                                                  tmp_path, tmp_path_factory):
    """Run B: the first train attempt fails, the retry succeeds without touching the features;
    the candidate then misses the threshold, so the run fails and models/current stays on A."""
    root, first = pipeline_root
    current = (root / "models" / "current").read_text()
    log = tmp_path / "calls.jsonl"
    flaky = tmp_path / "python"
    flaky.write_text(FLAKY_PYTHON.format(python=sys.executable, log=str(log)))
    flaky.chmod(0o755)
    tick = time.perf_counter()
    run = dagbag.dags["ser_jax_pipeline"].test(
        run_conf=_conf(root, tmp_path_factory, 0.99, local_python=str(flaky)))
    print(f"\npipeline run B: {time.perf_counter() - tick:.1f} s")
    states = {ti.task_id: (ti.state, ti.try_number) for ti in run.get_task_instances()}
    assert states["train"] == ("success", 2)
    assert states["features"] == ("success", 1) and states["evaluate"][0] == "success"
    assert states["gate"][0] == "failed" and states["publish"][0] == "upstream_failed"
    assert run.state == "failed"
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c["stage"] for c in calls] == ["features", "train", "train", "evaluate"]
    assert calls[1]["manifest_mtime_ns"] == calls[2]["manifest_mtime_ns"] == calls[3][
        "manifest_mtime_ns"] is not None
    name = _run_name(run)
    score = json.loads((root / "runs" / name / "evaluation" / "metrics.json").read_text())
    assert score["balanced_accuracy"] < 0.99  # so the threshold is what failed it
    assert (root / "models" / "current").read_text() == current
    assert not (root / "models" / name).exists()


STANDIN_MONITOR = """#!{python}
# Stands in for `python -m ser_jax.monitor` (another branch builds it): exits $STANDIN_EXIT.
import json, os, sys
assert sys.argv[1:3] == ["-m", "ser_jax.monitor"], sys.argv
print(json.dumps(sys.argv[3:]))
sys.exit(int(os.environ["STANDIN_EXIT"]))
"""


@pytest.mark.parametrize("exit_code, triggered", [(3, True), (0, False)])
def test_monitor_triggers_the_pipeline_only_on_drift(dagbag, pipeline_root, tmp_path,
                                                     monkeypatch, exit_code, triggered):
    """The branch on the monitor's exit code, with a stand-in for the monitor CLI."""
    from airflow.models.dagrun import DagRun
    root, _ = pipeline_root
    standin = tmp_path / "python"
    standin.write_text(STANDIN_MONITOR.format(python=sys.executable))
    standin.chmod(0o755)
    monkeypatch.setenv("STANDIN_EXIT", str(exit_code))
    before = len(DagRun.find(dag_id="ser_jax_pipeline"))
    conf = {"launcher": "local", "root": str(root), "audio": [str(tmp_path / "new")],
            "local_python": str(standin), "pipeline_conf": {"shards": 2}}
    run = dagbag.dags["ser_jax_monitor"].test(run_conf=conf)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["check_drift"] == "success"
    assert states["trigger_pipeline"] == ("success" if triggered else "skipped")
    runs = DagRun.find(dag_id="ser_jax_pipeline")
    assert len(runs) == before + triggered
    if triggered:
        newest = max(runs, key=lambda r: r.queued_at or r.start_date)
        assert newest.conf == {"root": str(root), "shards": 2}
