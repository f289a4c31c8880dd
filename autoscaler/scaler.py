"""ClearML's ``AutoScaler`` and ``AWSDriver``, driven by FleetFL's config.

The scaling logic is ClearML's (``clearml.automation.auto_scaler.AutoScaler.supervisor``): every
poll it reads each queue's entries and the workers whose id starts with ``workers_prefix``, starts
instances for waiting tasks up to each resource's maximum, terminates instances whose worker stayed
idle past the idle timeout and instances whose agent never registered within the spin-up timeout.
This module only maps our config onto ClearML's and fixes, in one place each, what stops ClearML's
classes from working as documented (see the comments naming each problem).

AWS credentials are never passed around: the driver uses boto3's credentials chain (environment,
``~/.aws``, instance profile); ``AWS_ENDPOINT_URL_EC2`` redirects it (tests use moto's server).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import boto3
from clearml.automation.auto_scaler import AutoScaler, ScalerConfig
from clearml.automation.aws_driver import AWSDriver
from clearml.backend_api import Session
from clearml.backend_api.session.defs import ENV_AUTH_TOKEN

from autoscaler.boot import boot_script
from autoscaler.config import AutoscalerConfig, Resource
from autoscaler.orphans import OWNER_TAG, reap_orphans

log = logging.getLogger(__name__)

#: Instance id through the instance metadata service, IMDSv2 (token) style: ClearML's driver uses
#: a plain IMDSv1 GET, which fails on instances that require tokens (the default of recent AMIs);
#: the worker id would then lack the instance id and the scaler would never see the worker register.
IMDS_INSTANCE_ID = (
    'T=$(curl -sf -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" '
    "http://169.254.169.254/latest/api/token); "
    'curl -sf -H "X-aws-ec2-metadata-token: $T" http://169.254.169.254/latest/meta-data/instance-id'
)


def worker_prefix(config: AutoscalerConfig, resource: Resource) -> str:
    """ClearML worker id of ``resource``'s instances without the instance id (as ClearML builds it)."""
    return f"{config.workers_prefix}:{resource.name}:{resource.instance_type}"


def worker_id(config: AutoscalerConfig, resource: Resource, instance_id: str) -> str:
    """The worker id an instance's agent registers under; the scaler matches workers by it."""
    return f"{worker_prefix(config, resource)}:{instance_id}"


def instance_tags(config: AutoscalerConfig, resource: Resource) -> dict[str, str]:
    """Tags of ``resource``'s instances: the config's global tags, the resource's, the owner tag."""
    return {**dict(config.tags), **dict(resource.tags), OWNER_TAG: config.workers_prefix}


def resource_configuration(config: AutoscalerConfig, resource: Resource) -> dict[str, Any]:
    """``resource`` in the form ClearML's ``AWSDriver.spin_up_worker`` reads."""
    tags = instance_tags(config, resource)
    conf: dict[str, Any] = {
        "instance_type": resource.instance_type,
        "ami_id": resource.ami,
        "is_spot": False,  # spot goes through RunInstances' market options (see below)
        "cpu_only": resource.cpu_only,
        # ClearML parses tags from a "k=v, k2=v2" string (the config refuses ',' and '=' in keys)
        "tags": ", ".join(f"{key}={value}" for key, value in tags.items()),
    }
    if resource.subnet:
        conf["subnet_id"] = resource.subnet
    else:
        conf["availability_zone"] = resource.availability_zone
    if resource.security_groups:
        conf["security_group_ids"] = list(resource.security_groups)
    if resource.key_name:
        conf["key_name"] = resource.key_name
    if resource.ebs_size_gb:
        conf["ebs_device_name"] = resource.ebs_device_name
        conf["ebs_volume_size"] = resource.ebs_size_gb
        conf["ebs_volume_type"] = resource.ebs_volume_type
    # Merged into ClearML's RunInstances arguments. Tags at launch cover the volumes too (cost
    # allocation) and leave no untagged instance if tagging afterwards fails; IMDSv2 only keeps the
    # instance profile's credentials away from SSRF.
    aws_tags = [{"Key": key, "Value": value} for key, value in tags.items()]
    extra: dict[str, Any] = {
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": aws_tags},
            {"ResourceType": "volume", "Tags": aws_tags},
        ],
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
    }
    if resource.spot:
        # Spot through RunInstances (one-time, terminated on interruption) rather than ClearML's
        # `is_spot` path: that one calls RequestSpotInstances and then blocks the whole scaler in a
        # waiter for up to 10 minutes when capacity is short, leaving the open request behind (to
        # be fulfilled later as an untagged, untracked instance), and its launch specification
        # takes neither tags nor metadata options. RunInstances fails at once instead (ClearML
        # logs it and retries next poll).
        extra["InstanceMarketOptions"] = {
            "MarketType": "spot",
            "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
        }
    conf["extra_configurations"] = extra
    return conf


def scaler_config(config: AutoscalerConfig) -> ScalerConfig:
    """ClearML's ``ScalerConfig`` for ``config`` (timeouts refined in :class:`FleetAutoScaler`)."""
    return ScalerConfig(
        # ScalerConfig only accepts whole minutes here (attrs validators instance_of(int)); the
        # exact values in seconds are set on the scaler after construction.
        max_idle_time_min=max(1, round(config.idle_timeout_s / 60)),
        polling_interval_time_min=config.polling_interval_s / 60,
        max_spin_up_time_min=max(1, round(config.spin_up_timeout_s / 60)),
        workers_prefix=config.workers_prefix,
        resource_configurations={r.name: resource_configuration(config, r) for r in config.resources},
        queues={q.name: [(r.name, r.max_instances) for r in q.resources] for q in config.queues},
    )


class FleetAWSDriver(AWSDriver):
    """ClearML's AWS driver with its clearml 2.1.12 defects fixed here and only here."""

    def spin_up_worker(self, resource: dict, worker_prefix: str, queue_name: str, task_id: str) -> str:
        # clearml 2.1.12 bug: AutoScaler.supervisor calls driver.spin_up_worker(resource=...), as
        # CloudDriver declares it, but AWSDriver names the parameter `resource_conf`. The TypeError
        # is caught and only logged ("Failed to start new instance"), so the stock AWS autoscaler
        # never starts an instance. Map the keyword.
        return super().spin_up_worker(
            resource_conf=resource, worker_prefix=worker_prefix, queue_name=queue_name, task_id=task_id
        )

    def instance_id_command(self) -> str:
        # ClearML's IMDSv1 call fails where instances require IMDSv2 tokens (see IMDS_INSTANCE_ID).
        return IMDS_INSTANCE_ID

    def console_log(self, instance_id: str) -> str:
        # ClearML's boot script runs under `set -x` and exports the ClearML keys, so the console
        # output can echo them; the scaler copies that output into its (ClearML-stored) log.
        # ClearML's per-instance log threads outlive the scaler (they poll for the whole spin-up
        # timeout): no EC2 calls once it has stopped.
        scaler = getattr(self, "scaler", None)
        if scaler is not None and not scaler._running():
            return ""
        text = super().console_log(instance_id)
        for secret in (self.secret_key, self.auth_token):
            if secret:
                text = text.replace(secret, "********")
        return text


def build_driver(config: AutoscalerConfig, session: Session | None = None) -> FleetAWSDriver:
    """ClearML's AWS driver for ``config``, authenticated with the current ClearML session.

    The ClearML address and keys (from the SDK's configuration) go into each instance's user data,
    as in ClearML's own autoscaler: give the autoscaler a key pair meant for workers.
    """
    session = session or Session()
    return FleetAWSDriver(
        git_user="",
        git_pass="",
        extra_clearml_conf=config.boot.extra_clearml_conf,
        api_server=session.get_api_server_host(),
        web_server=session.get_app_server_host(),
        files_server=session.get_files_server_host(),
        access_key=session.access_key,
        secret_key=session.secret_key,
        auth_token=ENV_AUTH_TOKEN.get(),
        extra_vm_bash_script=boot_script(config.boot),
        docker_image=config.boot.image if config.boot.mode == "image" else "",
        session=session,
        aws_region=config.region,
        use_credentials_chain=True,  # never keys in the driver: environment, ~/.aws or instance profile
        iam_arn=config.instance_profile_arn or "",
        iam_name=config.instance_profile_name or "",
    )


class FleetAutoScaler(AutoScaler):
    """ClearML's AutoScaler with second-level timeouts and an optional limit on polls."""

    def __init__(self, config: AutoscalerConfig, driver: AWSDriver, cycles: int | None = None) -> None:
        self.fleet_config = config
        self.cycles = cycles
        self.cycles_done = 0
        super().__init__(scaler_config(config), driver, logger=logging.getLogger("autoscaler.clearml"))
        # the scaler computes in float minutes: set the configured seconds exactly
        self.max_idle_time_min = config.idle_timeout_s / 60
        self.max_spin_up_time_min = config.spin_up_timeout_s / 60
        self.polling_interval_time_min = config.polling_interval_s / 60

    # ClearML's supervisor loop (`while self._running(): ...; sleep(polling interval)`) has no
    # per-poll hook; queue_mapping() is the first call of every poll, so polls are counted there
    # and the loop ends once `cycles` polls are done, without the final wait.
    def queue_mapping(self) -> tuple[dict[str, str], dict[str, str]]:
        self.cycles_done += 1
        return super().queue_mapping()

    def stale_workers(self, spun_workers: dict[str, tuple[str, float]]) -> Iterator[str]:
        yield from super().stale_workers(spun_workers)
        # ClearML keeps launched-but-unregistered instances in memory only (`spun_workers`): after
        # a restart, one whose agent never registers would run (and cost) forever. Apply the same
        # spin-up timeout to our tagged instances that this scaler does not know.
        try:
            known = {worker.id for worker in self.get_workers()} | set(spun_workers)
            reap_orphans(self.fleet_config, boto3.client("ec2", **self.driver.creds()), known)
        except Exception:  # never stop scaling for this; ClearML's loop would sleep 15 s and reset
            self.logger.exception("could not check for untracked instances")

    def _running(self) -> bool:
        if self.cycles is not None and self.cycles_done >= self.cycles:
            return False
        return super()._running()

    @property
    def polling_interval_time_min(self) -> float:
        if self.cycles is not None and self.cycles_done >= self.cycles:
            return 0.0  # last poll done: no wait before the loop ends
        return self._polling_interval_min

    @polling_interval_time_min.setter
    def polling_interval_time_min(self, value: float) -> None:
        self._polling_interval_min = float(value)


def build_autoscaler(
    config: AutoscalerConfig, cycles: int | None = None, driver: AWSDriver | None = None
) -> FleetAutoScaler:
    """ClearML's AutoScaler for ``config``; ``start()`` runs it (``cycles`` polls, or until ``stop()``)."""
    if cycles is not None and cycles < 1:
        raise ValueError(f"cycles must be >= 1, got {cycles}")
    driver = driver or build_driver(config)
    return FleetAutoScaler(config, driver, cycles=cycles)
