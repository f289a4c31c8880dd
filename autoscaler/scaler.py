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
import time
from collections.abc import Iterable, Iterator
from typing import Any

import boto3
from clearml.automation.auto_scaler import AutoScaler, ScalerConfig
from clearml.automation.aws_driver import AWSDriver
from clearml.automation.cloud_driver import clearml_conf_template
from clearml.backend_api import Session
from clearml.backend_api.session.defs import ENV_AUTH_TOKEN

from autoscaler import cloudwatch
from autoscaler.boot import boot_script
from autoscaler.config import AutoscalerConfig, Resource
from autoscaler.fleet import OWNER_TAG, RESOURCE_TAG, FleetBudget, LiveInstance, live_instances
from autoscaler.lock import ScalerLock, ScalerLockError
from autoscaler.secrets import boot_lines, parameter_name, store_credentials

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
    return {
        **dict(config.tags),
        **dict(resource.tags),
        OWNER_TAG: config.workers_prefix,
        RESOURCE_TAG: resource.name,
    }


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
        # hop limit 2: containers of image-mode tasks (one hop further) reach the instance profile
        "MetadataOptions": {
            "HttpTokens": "required",
            "HttpEndpoint": "enabled",
            "HttpPutResponseHopLimit": 2,
        },
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


def worker_boot_script(config: AutoscalerConfig) -> str:
    """FleetFL's part of the user data for ``config`` (with the credentials fetch from SSM)."""
    secrets = (
        boot_lines(parameter_name(config.workers_prefix), config.region) if config.secrets_in_ssm else ()
    )
    return boot_script(config.boot, secrets)


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
        name = worker_prefix.split(":")[1]
        target = self.scaler.launch_target(name)
        if target != name:  # blacked out since this poll's launches were planned
            conf = self.scaler.resource_configurations[target]
            return self.spin_up_worker(conf, self.scaler.gen_worker_prefix(target, conf), queue_name, task_id)
        try:
            instance_id = super().spin_up_worker(
                resource_conf=resource, worker_prefix=worker_prefix, queue_name=queue_name, task_id=task_id
            )
        except Exception as exc:
            # ClearML only logs a failed launch and tries again next poll, forever; and a spot
            # resource short of capacity blocks its queue (the next resource is used only once the
            # spot one is at its maximum). The scaler counts the failure and names a fallback.
            fallback = self.scaler.launch_failed(name, exc)
            if fallback is None:
                raise
            conf = self.scaler.resource_configurations[fallback]
            return self.spin_up_worker(
                conf, self.scaler.gen_worker_prefix(fallback, conf), queue_name, task_id
            )
        self.scaler.launched(name, instance_id)
        return instance_id

    def spin_down_worker(self, instance_id: str) -> None:
        super().spin_down_worker(instance_id)
        self.scaler.terminated(instance_id)

    def instance_id_command(self) -> str:
        # ClearML's IMDSv1 call fails where instances require IMDSv2 tokens (see IMDS_INSTANCE_ID).
        return IMDS_INSTANCE_ID

    #: set by build_driver: the ClearML credentials go to SSM, not into the user data
    secrets_in_ssm = False

    def clearml_conf(self) -> str:
        # clearml 2.1.12 defect: CloudDriver.clearml_conf copies CLEARML_AUTOSCALER_GIT_USER /
        # _PASSWORD from the scaler's environment into every instance's user data. With the
        # credentials in SSM, the git ones travel there too (autoscaler/secrets.py).
        if not self.secrets_in_ssm:
            return super().clearml_conf()
        return clearml_conf_template.format(
            git_user="", git_pass="", extra_clearml_conf=self.extra_clearml_conf
        )

    def console_log(self, instance_id: str) -> str:
        # ClearML's boot script runs under `set -x` and exports the ClearML keys, so the console
        # output can echo them; the scaler copies that output into its (ClearML-stored) log.
        # ClearML's per-instance log threads outlive the scaler (they poll for the whole spin-up
        # timeout): no EC2 calls once it has stopped.
        scaler = getattr(self, "scaler", None)
        if scaler is not None and not scaler._running():
            return ""
        text = super().console_log(instance_id)
        for secret in (self.secret_key, self.auth_token, self.session.secret_key):
            if secret:
                text = text.replace(secret, "********")
        return text


def build_driver(config: AutoscalerConfig, session: Session | None = None) -> FleetAWSDriver:
    """ClearML's AWS driver for ``config``, authenticated with the current ClearML session.

    The ClearML address goes into each instance's user data; the keys (from the SDK's
    configuration) go to SSM Parameter Store (``secrets_in_ssm``, the default) or, as in ClearML's
    own autoscaler, into the user data. Give the autoscaler a key pair meant for workers.
    """
    session = session or Session()
    in_user_data = not config.secrets_in_ssm
    driver = FleetAWSDriver(
        git_user="",
        git_pass="",
        extra_clearml_conf=config.boot.extra_clearml_conf,
        api_server=session.get_api_server_host(),
        web_server=session.get_app_server_host(),
        files_server=session.get_files_server_host(),
        access_key=session.access_key if in_user_data else "",
        secret_key=session.secret_key if in_user_data else "",
        auth_token=ENV_AUTH_TOKEN.get() if in_user_data else "",
        extra_vm_bash_script=worker_boot_script(config),
        docker_image=config.boot.image if config.boot.mode == "image" else "",
        session=session,
        aws_region=config.region,
        use_credentials_chain=True,  # never keys in the driver: environment, ~/.aws or instance profile
        iam_arn=config.instance_profile_arn or "",
        iam_name=config.instance_profile_name or "",
    )
    driver.secrets_in_ssm = config.secrets_in_ssm
    return driver


#: EC2 error codes of a spot launch that mean "no spot capacity at this price now": the queue's next
#: resource (on-demand) is launched at once and the spot resource skipped for limits.spot_blackout_s.
SPOT_CAPACITY_ERRORS = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientCapacity",
        "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded",
        "UnfulfillableCapacity",
        "VcpuLimitExceeded",
    }
)

#: Seconds a just-launched instance is counted even if DescribeInstances does not list it yet (EC2's
#: listing is eventually consistent).
LISTING_GRACE_S = 120.0


class AutoscalerStopped(RuntimeError):
    """The scaler stopped on an error (too many failed launches in a row, lock lost)."""


class LaunchSkipped(RuntimeError):
    """A planned launch was dropped (its spot resource blacked out, no fallback within the caps)."""


class _LaunchPlan(list):
    """The list in which ClearML's supervisor collects one poll's launches (``extra_allocations``
    returns it); each queue's batch goes through :meth:`FleetAutoScaler.admit` on the way in."""

    def __init__(self, scaler: FleetAutoScaler) -> None:
        super().__init__()
        self.scaler = scaler

    def extend(self, resources: Iterable[Any]) -> None:
        super().extend(self.scaler.admit(list(resources)))


class FleetAutoScaler(AutoScaler):
    """ClearML's AutoScaler, with what runs read from EC2, fleet-wide caps, spot fallback, a lock,
    second-level timeouts and an optional limit on polls.

    Hooks into ClearML's supervisor loop, in the order it calls them each poll: ``queue_mapping``
    (poll count, lock renewal), ``get_workers`` (registered workers), ``stale_workers`` (the
    booting instances, from EC2), ``update_idle_workers``, ``extra_allocations`` (the caps), the
    driver's ``spin_up_worker`` / ``spin_down_worker`` (failures, fallback, bookkeeping).
    """

    def __init__(self, config: AutoscalerConfig, driver: AWSDriver, cycles: int | None = None) -> None:
        self.fleet_config = config
        self.cycles = cycles
        self.cycles_done = 0
        self.failure: str | None = None
        self.consecutive_failures = 0
        self.ec2 = boto3.client("ec2", **driver.creds())
        self.lock = ScalerLock(self.ec2, config.workers_prefix, config.limits.lock_stale_after_s)
        self._queue_ids: dict[str, str] = {}
        self._registered: set[str] = set()
        self._spun_workers: dict[str, tuple[str, float]] = {}
        self._idle_workers: dict[str, tuple[float, str, Any]] = {}
        self._live: dict[str, LiveInstance] | None = None
        self._recent: dict[str, LiveInstance] = {}  # launched by this scaler, maybe not listed yet
        self._lock_renewed = False
        self._budget: FleetBudget | None = None
        self._blackout: dict[str, float] = {}  # spot resource -> skipped until (epoch seconds)
        self._launches: dict[str, int] = {}  # per queue, since the last published metrics
        self._failures: dict[str, int] = {}
        self.cloudwatch = boto3.client("cloudwatch", **driver.creds()) if config.cloudwatch else None
        super().__init__(scaler_config(config), driver, logger=logging.getLogger("autoscaler.clearml"))
        # the scaler computes in float minutes: set the configured seconds exactly
        self.max_idle_time_min = config.idle_timeout_s / 60
        self.max_spin_up_time_min = config.spin_up_timeout_s / 60
        self.polling_interval_time_min = config.polling_interval_s / 60

    # ------------------------------------------------------------------ start, stop, poll count
    def start(self) -> None:
        """Take the scaler lock, run ClearML's loop, give the lock back; raise
        :class:`AutoscalerStopped` (or :class:`~autoscaler.lock.ScalerLockError`) on an error stop."""
        self.lock.acquire()
        self._lock_renewed = True
        try:
            if self.fleet_config.secrets_in_ssm:
                session = self.driver.session
                ssm = boto3.client("ssm", **self.driver.creds())
                name = parameter_name(self.workers_prefix)
                store_credentials(ssm, name, session.access_key or "", session.secret_key or "")
            self._create_alarms()
            super().start()
        finally:
            self.lock.release()
        if self.failure:
            raise AutoscalerStopped(self.failure)

    def _create_alarms(self) -> None:
        settings = self.fleet_config.cloudwatch
        if settings is None:
            return
        try:
            sns = boto3.client("sns", **self.driver.creds())
            cloudwatch.ensure_alarms(
                self.cloudwatch, sns, list(settings.alarms), settings.sns_topic, self.workers_prefix
            )
        except Exception as exc:  # metrics and alarms never stop scaling
            self.logger.warning("could not create the CloudWatch alarms: %s", exc)

    def _publish_metrics(self) -> None:
        """The per-queue metrics of this poll (launch counts: since the previous poll)."""
        if self.cloudwatch is None or self._live is None:
            return
        data = []
        for queue, resources in self.queues.items():
            names = {name for name, _ in resources}
            live = [inst for inst in self._live.values() if inst.resource in names]
            try:
                queued = len(self.api_client.queues.get_by_id(self._queue_ids[queue]).entries or [])
            except Exception:
                continue
            values = {
                "QueuedTasks": queued,
                "LiveInstances": len(live),
                "BootingInstances": sum(1 for name, _ in self._spun_workers.values() if name in names),
                "Launches": self._launches.pop(queue, 0),
                "LaunchFailures": self._failures.pop(queue, 0),
                "HourlyCost": sum(self.fleet_config.limits.price(inst.instance_type) or 0.0 for inst in live),
            }
            data += cloudwatch.queue_data(queue, values)
        cloudwatch.publish(self.cloudwatch, data)

    def fail(self, message: str) -> None:
        """Stop the scaler after this poll, with ``message`` as the reason."""
        self.logger.error("%s", message)
        self.failure = self.failure or message
        self.stop()

    # ClearML's supervisor loop (`while self._running(): ...; sleep(polling interval)`) has no
    # per-poll hook; queue_mapping() is the first call of every poll, so polls are counted there
    # and the loop ends once `cycles` polls are done, without the final wait.
    def queue_mapping(self) -> tuple[dict[str, str], dict[str, str]]:
        self.cycles_done += 1
        self._budget = None
        try:
            self.lock.renew()
            self._lock_renewed = True
        except ScalerLockError as exc:
            self._lock_renewed = False
            self.fail(str(exc))
        except Exception:  # cannot tell whether we still hold it: launch nothing this poll
            self._lock_renewed = False
            self.logger.exception("could not renew the scaler lock: no launches this poll")
        id_to_name, name_to_id = super().queue_mapping()
        self._queue_ids = name_to_id
        return id_to_name, name_to_id

    def get_workers(self) -> list[Any]:
        workers = super().get_workers()
        self._registered = {worker.id for worker in workers}
        return workers

    # ------------------------------------------------------------------ what runs: EC2 itself
    def stale_workers(self, spun_workers: dict[str, tuple[str, float]]) -> Iterator[str]:
        # clearml 2.1.12 defect: launched-but-unregistered instances (`spun_workers`) live only in
        # the supervisor's memory, so a restarted scaler (crash, re-enqueued service task) sees
        # none of the instances still booting and launches a second set; one that never
        # registers is never terminated. Rebuild `spun_workers` from EC2 (our tagged instances
        # that have no registered worker) every poll; ClearML then counts them against each
        # queue's demand and each resource's maximum and applies its spin-up timeout to them.
        self._spun_workers = spun_workers
        self._sync_with_ec2(spun_workers)
        yield from super().stale_workers(spun_workers)

    def _sync_with_ec2(self, spun_workers: dict[str, tuple[str, float]]) -> None:
        try:
            listed = live_instances(self.ec2, self.workers_prefix)
        except Exception:
            self._live = None  # fail closed: without the inventory nothing is launched
            self.logger.exception("could not list the fleet's instances in EC2: no launches this poll")
            return
        now = time.time()
        self._recent = {
            i: inst for i, inst in self._recent.items() if now - inst.launch_time < LISTING_GRACE_S
        }
        live = {inst.instance_id: inst for inst in listed}
        for instance_id, inst in self._recent.items():
            live.setdefault(instance_id, inst)
        self._live = live
        registered = {worker_id.rsplit(":", 1)[-1] for worker_id in self._registered}
        booting, orphans = {}, []
        for inst in live.values():
            if inst.instance_id in registered:
                continue
            if inst.resource not in self.resource_configurations:  # not a resource of this config
                if now - inst.launch_time > self.max_spin_up_time_min * 60:
                    orphans.append(inst.instance_id)
                continue
            worker_id = f"{self.workers_prefix}:{inst.resource}:{inst.instance_type}:{inst.instance_id}"
            booting[worker_id] = spun_workers.get(worker_id, (inst.resource, inst.launch_time))
        spun_workers.clear()
        spun_workers.update(booting)
        for instance_id in orphans:
            self.logger.warning("terminating %s: unregistered, of no configured resource", instance_id)
            try:
                self.driver.spin_down_worker(instance_id)
            except Exception:
                self.logger.exception("could not terminate %s", instance_id)

    def update_idle_workers(
        self, all_workers: list[Any], idle_workers: dict[str, tuple[float, str, Any]]
    ) -> None:
        super().update_idle_workers(all_workers, idle_workers)
        self._idle_workers = idle_workers

    # ------------------------------------------------------------------ what may be launched
    def extra_allocations(self) -> list[Any]:
        if self._live is not None and self._lock_renewed and self.failure is None:
            self._budget = FleetBudget(self.fleet_config, list(self._live.values()))
        self._publish_metrics()
        return _LaunchPlan(self)

    def admit(self, resources: list[Any]) -> list[str]:
        """The launches of one queue's batch that go ahead (see the bug named below)."""
        if not resources:
            return []
        queue = self.resource_to_queue[resources[0]]
        # clearml 2.1.12 bug: for each of a queue's resources, the supervisor adds
        # min(spin_up_count, max_allowed) instances, not min(what is still missing, max_allowed):
        # with two resources of max 2 and 3 waiting tasks it launches 4. The correct batch is the
        # first `spin_up_count` entries of ClearML's list (it fills resources in order).
        wanted = self._queue_demand(queue)
        if len(resources) > wanted:
            self.logger.info("queue %r needs %d new instance(s), not %d", queue, wanted, len(resources))
        admitted = []
        for resource in resources[:wanted]:
            chosen = self._choose(queue, resource)
            if chosen is None:
                break
            admitted.append(chosen)
        return admitted

    def _queue_demand(self, queue: str) -> int:
        """Waiting tasks of ``queue`` not covered by an idle or booting instance of its resources."""
        entries = self.api_client.queues.get_by_id(self._queue_ids[queue]).entries or []
        names = {name for name, _ in self.queues[queue]}
        covered = sum(1 for _, name, _ in self._idle_workers.values() if name in names)
        covered += sum(1 for name, _ in self._spun_workers.values() if name in names)
        return max(0, len(entries) - covered)

    def _choose(self, queue: str, resource: str, skip: str | None = None) -> str | None:
        """``resource``, or the queue's next resource when it is blacked out or at a cap; None
        (logged with the reasons) when no resource may be launched."""
        if self._budget is None:
            self.logger.warning(
                "not launching for queue %r: the fleet's state in EC2 is unknown this poll", queue
            )
            return None
        names = [name for name, _ in self.queues[queue]]
        reasons = []
        for candidate in names[names.index(resource) :]:
            until = self._blackout.get(candidate, 0.0)
            if candidate == skip or until > time.time():
                reasons.append(f"{candidate} is blacked out for {until - time.time():.0f} s (spot capacity)")
                continue
            reason = self._budget.refusal(candidate)
            if reason is None:
                self._budget.plan(candidate)
                return candidate
            reasons.append(reason)
        self.logger.warning("refusing to launch an instance for queue %r: %s", queue, "; ".join(reasons))
        return None

    # ------------------------------------------------------------------ launch outcomes
    def launch_target(self, resource: str) -> str:
        """What to launch for a planned launch of ``resource``: itself, or the queue's next resource
        when it was blacked out after the plan was made (raises :class:`LaunchSkipped` if none)."""
        if self.failure is not None:
            raise LaunchSkipped(f"not launching {resource}: the scaler is stopping ({self.failure})")
        if self._blackout.get(resource, 0.0) <= time.time():
            return resource
        if self._budget is not None:
            self._budget.unplan(resource)
        fallback = self._choose(self.resource_to_queue[resource], resource, skip=resource)
        if fallback is None:
            raise LaunchSkipped(f"{resource} is blacked out and no other resource of its queue may launch")
        return fallback

    def launched(self, resource: str, instance_id: str) -> None:
        """A launch of ``resource`` succeeded (called by the driver)."""
        self.consecutive_failures = 0
        queue = self.resource_to_queue[resource]
        self._launches[queue] = self._launches.get(queue, 0) + 1
        conf = self.resource_configurations[resource]
        inst = LiveInstance(
            instance_id, resource, conf["instance_type"], time.time(), spot=self._is_spot(resource)
        )
        self._recent[instance_id] = inst
        if self._live is not None:
            self._live[instance_id] = inst

    def terminated(self, instance_id: str) -> None:
        """An instance was terminated (called by the driver)."""
        self._recent.pop(instance_id, None)
        if self._live is not None:
            self._live.pop(instance_id, None)

    def _is_spot(self, resource: str) -> bool:
        return "InstanceMarketOptions" in self.resource_configurations[resource].get(
            "extra_configurations", {}
        )

    def launch_failed(self, resource: str, error: BaseException) -> str | None:
        """Count a failed launch of ``resource``; returns the resource to launch instead (spot
        capacity or price errors: the queue's next resource), or None."""
        code = getattr(error, "response", {}).get("Error", {}).get("Code", type(error).__name__)
        self.consecutive_failures += 1
        queue = self.resource_to_queue[resource]
        self._failures[queue] = self._failures.get(queue, 0) + 1
        limit = self.fleet_config.limits.max_consecutive_launch_failures
        self.logger.error(
            "launch of %s failed (%d in a row, stop at %d): %s: %s",
            resource,
            self.consecutive_failures,
            limit,
            code,
            error,
        )
        if self._budget is not None:
            self._budget.unplan(resource)
        if self.consecutive_failures >= limit:
            self.fail(
                f"{self.consecutive_failures} launches failed in a row (last: {resource}: {code}: {error})"
            )
            return None
        if code not in SPOT_CAPACITY_ERRORS or not self._is_spot(resource):
            return None
        blackout = self.fleet_config.limits.spot_blackout_s
        self._blackout[resource] = time.time() + blackout
        self.logger.warning("spot resource %s blacked out for %.0f s after %s", resource, blackout, code)
        fallback = self._choose(self.resource_to_queue[resource], resource, skip=resource)
        if fallback is not None:
            self.logger.warning("launching %s instead of %s", fallback, resource)
        return fallback

    def _running(self) -> bool:
        if self.cycles is not None and self.cycles_done >= self.cycles:
            return False
        return super()._running()

    @property
    def polling_interval_time_min(self) -> float:
        if not self._running():
            return 0.0  # last poll done or stopped: no wait before the loop ends
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
