"""Running the autoscaler: in the foreground, or as a ClearML service task on the ``services`` queue.

``fleetfl autoscaler run`` calls :func:`run_autoscaler`. ``fleetfl autoscaler enqueue`` calls
:func:`enqueue_service`, which creates a ClearML *service* task running ``python -m
autoscaler.service`` (this module's :func:`main`) and enqueues it; a clearml-agent in services mode
runs it. The task stores the config as a YAML configuration object (queues, resources, boot) and
its scalar settings (polling interval, timeouts, region...) as parameters, both editable in the UI
before the task is (re)enqueued.

AWS credentials never enter the task: on the agent's machine boto3 reads them from its environment,
``~/.aws`` or its instance profile.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from autoscaler.config import (
    AutoscalerConfig,
    AutoscalerConfigError,
    config_with_settings,
    split_settings,
)

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Names on the service task: configuration object, parameter section, poll-limit parameter.
CONFIG_OBJECT = "autoscaler"
PARAMETER_SECTION = "Autoscaler"
CYCLES_PARAMETER = "cycles"


class AWSAccessError(ValueError):
    """EC2 cannot be reached with the credentials boto3 finds (none, or refused)."""


def ec2_client(config: AutoscalerConfig) -> Any:
    """A boto3 EC2 client for the config's region, from boto3's credentials chain only."""
    import boto3

    return boto3.client("ec2", region_name=config.region)


def check_aws_account(config: AutoscalerConfig) -> list[str]:
    """Everything a launch needs, in the account: AMIs, subnets, groups, zones, types, key pairs,
    instance profile, vCPU quotas (:mod:`autoscaler.preflight`); returns the warnings."""
    import boto3

    from autoscaler.preflight import check_account, check_aws

    ec2 = ec2_client(config)
    check_aws(config, ec2)
    iam = boto3.client("iam", region_name=config.region)
    quotas = boto3.client("service-quotas", region_name=config.region)
    return check_account(config, ec2, iam, quotas)


def preflight(config: AutoscalerConfig) -> list[str]:
    """Check the ClearML queues and what a launch needs in AWS before the first poll; returns
    the warnings (also logged)."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from autoscaler.preflight import check_queues, clearml_queue_names

    if not config.create_missing_queues:
        check_queues(config, clearml_queue_names())
    try:
        warnings = check_aws_account(config)
    except NoCredentialsError:
        raise AWSAccessError(
            "no AWS credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the "
            "environment, or run where an instance profile grants EC2 access (see docs/autoscaler.md)"
        ) from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise AWSAccessError(
            f"EC2 refused {exc.operation_name}: {error.get('Code')}: {error.get('Message')}"
        ) from None
    except BotoCoreError as exc:
        raise AWSAccessError(f"EC2 unreachable in {config.region}: {exc}") from None
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


def run_autoscaler(config: AutoscalerConfig, cycles: int | None = None, check: bool = True) -> Any:
    """Run ClearML's autoscaler for ``config`` in this process until ``cycles`` polls are done
    (forever when None; Ctrl-C or ``stop()`` ends it). Returns the scaler (its state for tests)."""
    from autoscaler.scaler import build_autoscaler

    if check:
        preflight(config)
    scaler = build_autoscaler(config, cycles=cycles)
    log.info(
        "autoscaling %s every %.0f s (idle timeout %.0f s, spin-up timeout %.0f s)",
        ", ".join(f"{q.name} ({', '.join(r.name for r in q.resources)})" for q in config.queues),
        config.polling_interval_s,
        config.idle_timeout_s,
        config.spin_up_timeout_s,
    )
    try:
        scaler.start()  # AutoscalerStopped / ScalerLockError: stopped on an error (exit non-zero)
    except KeyboardInterrupt:
        scaler.stop()
        scaler.lock.release()
    return scaler


# ------------------------------------------------------------------------ the ClearML service task
def store_on_task(task: Any, config: AutoscalerConfig, cycles: int | None = None) -> None:
    """Write ``config`` onto ``task``: scalar settings as parameters, the rest as YAML."""
    settings, document = split_settings(config)
    task.set_configuration_object(
        name=CONFIG_OBJECT,
        config_text=yaml.safe_dump(document, sort_keys=False),
        config_type="yaml",
        description="FleetFL autoscaler: queues, EC2 resources, boot (no credentials)",
    )
    parameters = {f"{PARAMETER_SECTION}/{key}": value for key, value in settings.items()}
    parameters[f"{PARAMETER_SECTION}/{CYCLES_PARAMETER}"] = cycles or 0
    task.set_parameters(parameters)


def load_from_task(task: Any) -> tuple[AutoscalerConfig, int | None]:
    """The config and poll limit stored on ``task`` (as edited in the UI), validated."""
    source = f"task {task.id} configuration {CONFIG_OBJECT!r}"
    text = task.get_configuration_object(CONFIG_OBJECT)
    if not text:
        raise AutoscalerConfigError(f"{source}: missing (create the task with `fleetfl autoscaler enqueue`)")
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise AutoscalerConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise AutoscalerConfigError(f"{source}: expected a YAML mapping")
    settings = dict(task.get_parameters_as_dict().get(PARAMETER_SECTION, {}))
    cycles_text = str(settings.pop(CYCLES_PARAMETER, "0") or "0").strip()
    try:
        cycles = int(float(cycles_text))
    except ValueError:
        raise AutoscalerConfigError(
            f"task {task.id} parameter {PARAMETER_SECTION}/{CYCLES_PARAMETER}: "
            f"expected a whole number, got {cycles_text!r}"
        ) from None
    config = config_with_settings(document, settings, source=f"task {task.id}")
    return config, (cycles if cycles > 0 else None)


def checkout_source(root: Path = REPO_ROOT) -> tuple[str, str] | None:
    """(``origin`` URL, ``HEAD`` commit) of the git checkout at ``root``, or None without either."""
    import shutil
    import subprocess

    git = shutil.which("git")
    if git is None:
        return None
    answers = []
    for args in (["remote", "get-url", "origin"], ["rev-parse", "HEAD"]):
        result = subprocess.run([git, "-C", str(root), *args], capture_output=True, text=True, check=False)
        if result.returncode != 0 or not result.stdout.strip():
            return None
        answers.append(result.stdout.strip())
    url, commit = answers
    if "://" not in url and not re.match(r"^[\w.-]+@[\w.-]+:", url):  # a local path: a file:// URL
        url = (root / url).resolve().as_uri()  # (ClearML would take a bare path for a local folder)
    return url, commit


def enqueue_service(
    config: AutoscalerConfig, queue: str = "services", cycles: int | None = None, repo: str | None = None
) -> str:
    """Create the autoscaler's ClearML service task and enqueue it on ``queue``; returns its id.

    The task runs ``python -m autoscaler.service`` with the repository root as working directory.
    Its code: ``repo`` (a git URL, latest commit of its default branch, or a local checkout: its
    ``origin`` at its ``HEAD`` commit); by default this checkout's ``origin`` at ``HEAD`` (push it
    first: uncommitted changes are not included). With ``repo=""``, or no ``origin``, the task
    records no repository and the agent must import FleetFL from its own Python path
    (``CLEARML_AGENT_EXTRA_PYTHON_PATH=<FleetFL checkout>``).
    """
    from clearml import Task

    from autoscaler.preflight import clearml_queue_names

    if queue not in clearml_queue_names():
        raise AutoscalerConfigError(
            f"--queue {queue}: no such queue on the ClearML server (start a services agent with "
            f"`clearml-agent daemon --services-mode --queue {queue} --create-queue` first)"
        )
    commit = None
    if repo is None or (repo and Path(repo).is_dir()):
        # ClearML's own detection records no repository for a module entry point in a local
        # folder: name the remote and commit explicitly
        source = checkout_source(Path(repo) if repo else REPO_ROOT)
        if source is None and repo:
            raise AutoscalerConfigError(f"--repo {repo}: not a git checkout with an 'origin' remote")
        repo, commit = source if source else (None, None)
    task = Task.create(
        project_name=config.service_project,
        task_name=config.service_name,
        task_type=Task.TaskTypes.service,
        repo=repo or None,
        commit=commit,
        module="autoscaler.service",
        working_directory=".",
        add_task_init_call=False,
        detect_repository=False,
    )
    try:
        store_on_task(task, config, cycles)
        Task.enqueue(task, queue_name=queue)
    except BaseException:
        task.delete()  # no half-made service task left behind
        raise
    log.info("autoscaler service task %s enqueued on %r", task.id, queue)
    return task.id


def main() -> int:
    """Entry point of the service task (run by a clearml-agent, ``python -m autoscaler.service``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from clearml import Task

    if Task.running_locally():
        print("autoscaler.service runs as a ClearML task: use `fleetfl autoscaler enqueue` (or `run`)")
        return 2
    task = Task.init(auto_connect_arg_parser=False, auto_connect_frameworks=False)
    try:
        config, cycles = load_from_task(task)
        run_autoscaler(config, cycles=cycles)
    except ValueError as exc:  # config and AWS access problems: one clear line in the task's log
        log.error("%s", exc)
        return 2
    except RuntimeError as exc:  # AutoscalerStopped, ScalerLockError: the scaler stopped on an error
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
