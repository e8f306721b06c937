"""ser-jax drift monitor: checks newly arrived audio against the published model and starts the
training pipeline when it has drifted.

``python -m ser_jax.monitor --bundle=ROOT/models/<current>/bundle --report=ROOT/monitor/<run>
AUDIO...`` exits 0 (no drift: nothing else runs) or 3 (drift: ``ser_jax_pipeline`` is
triggered with ``pipeline_conf``); any other exit code fails the task.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # not every Airflow process puts the DAG folder on sys.path
    sys.path.insert(0, _HERE)

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Param, Variable, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from ser_jax_dag import launchers, monitor
from ser_jax_dag import publish as publish_lib
from ser_jax_dag.params import RunParams, models_dir, run_name_from_run_id
from ser_jax_dag.pods import pod_spec

with DAG(
    dag_id="ser_jax_monitor",
    description=__doc__.splitlines()[0],
    schedule="0 6 * * *",  # daily, after the night's audio has landed
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,  # the pipeline's conf reaches the trigger as a dict
    params={
        "launcher": Param("gke", enum=["gke", "kubernetes", "local"]),
        "root": Param("", type="string", description="Folder or gs:// bucket with models/; "
                                                     "'' = Variable ser_jax_root"),
        "audio": Param([], type="array", items={"type": "string"},
                       description="New audio files or folders to check; [] = Variable "
                                   "ser_jax_monitor_audio (comma-separated)"),
        "image": Param("", type="string", description="'' = Variable ser_jax_image_cpu"),
        "local_python": Param("", type="string"),
        "local_repo": Param("", type="string"),
        "pipeline_conf": Param({}, type="object",
                               description="Params for the ser_jax_pipeline run drift triggers "
                                           "(root defaults to this run's root)"),
    },
    tags=["ser-jax", "monitoring"],
    doc_md=__doc__,
) as dag:

    @task.short_circuit(retries=2, retry_delay=datetime.timedelta(minutes=5),
                        execution_timeout=datetime.timedelta(hours=1))
    def check_drift() -> bool:
        """True (go on and retrain) when the monitor exits 3; False (skip) when it exits 0."""
        context = get_current_context()
        values = dict(context["params"])
        # Scheduled runs take their defaults from Variables: no code edit per deployment.
        values["root"] = values["root"] or Variable.get("ser_jax_root", default="")
        audio = list(values.pop("audio")) or [
            p for p in Variable.get("ser_jax_monitor_audio", default="").split(",") if p]
        pipeline_conf = {"root": values["root"], **values.pop("pipeline_conf")}
        context["ti"].xcom_push(key="pipeline_conf", value=pipeline_conf)
        params = RunParams.from_dict({**values, "hardware": "cpu"})
        current = publish_lib.current(params.root)
        if current is None:
            raise AirflowSkipException(f"nothing published under {models_dir(params.root)} "
                                       "yet: no model to check drift against")
        run = run_name_from_run_id(context["run_id"])
        bundle = f"{models_dir(params.root)}/{current['run']}/bundle"
        report = f"{params.root.rstrip('/')}/monitor/{run}"
        env = launchers.environment()
        if params.launcher == "local":
            command = monitor.command(bundle, report, audio, launchers.local_python(params))
            code = launchers.run_local(command, launchers.local_env(params, env, run, "monitor"),
                                       params.local_repo)
            return monitor.drifted(code)
        spec = pod_spec(params, env, "monitor", run, monitor.command(bundle, report, audio))
        operator: KubernetesPodOperator = launchers.pod_operator(
            params.launcher, spec, env, context["ti"].task_id,
            skip_on_exit_code=[monitor.DRIFT])
        try:
            operator.execute(context)  # exit 0: no drift; other codes raise
        except AirflowSkipException:
            return True  # the pod exited DRIFT
        return False

    retrain = TriggerDagRunOperator(
        task_id="trigger_pipeline", trigger_dag_id="ser_jax_pipeline",
        conf="{{ ti.xcom_pull(task_ids='check_drift', key='pipeline_conf') }}",
        wait_for_completion=False)

    check_drift() >> retrain
