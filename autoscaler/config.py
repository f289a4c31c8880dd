"""The autoscaler's typed YAML config: what to start on EC2 for which ClearML queue, and when.

One file feeds the CLI (``fleetfl autoscaler run``), the ClearML service task (``enqueue``: the same
document is stored on the task, its scalar settings as editable parameters) and the mapping onto
ClearML's own ``ScalerConfig`` (:mod:`autoscaler.scaler`). Every problem is reported as an
:class:`AutoscalerConfigError` (a ``ValueError``) naming the file, the line and the key, e.g.
``fleet.yaml:14: queues.train.resources[0].ami: missing (an AMI id such as ami-0abc12345678def00)``.

The config never holds AWS credentials: boto3 finds them in the environment, the shared credentials
files or the instance profile. Keys that look like credentials are refused, not ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoscaler.fleet_config import (
    INSTANCE_TYPE_PATTERN,
    NAME_PATTERN,
    AlarmConfig,
    CloudWatchConfig,
    Limits,
    read_cloudwatch,
    read_limits,
)
from autoscaler.yaml_reader import AutoscalerConfigError, YamlReader, compose

__all__ = ["AlarmConfig", "AutoscalerConfigError", "CloudWatchConfig", "Limits"]

#: Where relative ``boot.requirements`` paths are looked up after the config file's own folder.
REPO_ROOT = Path(__file__).resolve().parent.parent

#: clearml-agent release the instances install (the one FleetFL is tested with).
DEFAULT_AGENT_VERSION = "3.0.3"

BOOT_MODES = ("agent", "image")
EBS_VOLUME_TYPES = ("gp2", "gp3", "io1", "io2", "st1", "sc1", "standard")

_NAME = NAME_PATTERN
_QUEUE = re.compile(r"^[^\s:][^:]*(?<!\s)$")
_INSTANCE_TYPE = INSTANCE_TYPE_PATTERN
_AMI = re.compile(r"^ami-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
_SUBNET = re.compile(r"^subnet-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
_SECURITY_GROUP = re.compile(r"^sg-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
_REGION = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d+$")
_ZONE = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d+[a-z]$")
_DEVICE = re.compile(r"^/dev/[a-z0-9]+$")
_VERSION = re.compile(r"^\d+(?:\.\d+){0,3}$")
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*$")
_INSTANCE_PROFILE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:instance-profile/[\w+=,.@/-]+$")


@dataclass(frozen=True)
class Resource:
    """One kind of EC2 instance that serves a queue (ClearML calls it a resource)."""

    name: str
    instance_type: str
    ami: str
    max_instances: int
    spot: bool = False
    subnet: str | None = None
    availability_zone: str | None = None
    security_groups: tuple[str, ...] = ()
    key_name: str | None = None
    ebs_size_gb: int | None = None
    ebs_device_name: str = "/dev/sda1"
    ebs_volume_type: str = "gp3"
    tags: tuple[tuple[str, str], ...] = ()
    cpu_only: bool = False


@dataclass(frozen=True)
class QueueConfig:
    """A ClearML queue and the resources started for it, tried in order."""

    name: str
    resources: tuple[Resource, ...]


@dataclass(frozen=True)
class BootConfig:
    """What each instance runs at boot (after ClearML's own agent set-up script).

    ``agent``: clearml-agent (pinned) serving the queue in venv mode, reusing a virtual environment
    with FleetFL's requirements installed once at boot. ``image``: clearml-agent in docker mode, each
    task running in ``image`` (the worker image of ``autoscaler/Dockerfile``, requirements baked in).
    """

    mode: str = "agent"
    image: str | None = None
    agent_version: str = DEFAULT_AGENT_VERSION
    python_version: str = "3.11"
    requirements: tuple[str, ...] = ()
    extra_script: str = ""
    extra_clearml_conf: str = ""


@dataclass(frozen=True)
class AutoscalerConfig:
    """The whole autoscaler config (see ``autoscaler/example.yaml`` for every key)."""

    region: str
    queues: tuple[QueueConfig, ...]
    polling_interval_s: float = 30.0
    idle_timeout_s: float = 600.0
    spin_up_timeout_s: float = 900.0
    workers_prefix: str = "fleetfl"
    create_missing_queues: bool = False
    secrets_in_ssm: bool = True
    instance_profile_name: str | None = None
    instance_profile_arn: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    boot: BootConfig = field(default_factory=BootConfig)
    limits: Limits = field(default_factory=Limits)
    cloudwatch: CloudWatchConfig | None = None
    service_project: str = "DevOps"
    service_name: str = "FleetFL autoscaler"

    @property
    def resources(self) -> tuple[Resource, ...]:
        """Every resource of every queue, in config order."""
        return tuple(resource for queue in self.queues for resource in queue.resources)

    def to_dict(self) -> dict[str, Any]:
        """A plain document that :func:`config_from_dict` reads back to an equal config.

        ``boot.requirements`` is written as the list of requirement lines (never a path), so the
        document is complete on a machine without the repository (the ClearML service task).
        """
        return {
            "region": self.region,
            "polling_interval_s": self.polling_interval_s,
            "idle_timeout_s": self.idle_timeout_s,
            "spin_up_timeout_s": self.spin_up_timeout_s,
            "workers_prefix": self.workers_prefix,
            "create_missing_queues": self.create_missing_queues,
            "secrets_in_ssm": self.secrets_in_ssm,
            "instance_profile_name": self.instance_profile_name,
            "instance_profile_arn": self.instance_profile_arn,
            "service_project": self.service_project,
            "service_name": self.service_name,
            "tags": dict(self.tags),
            "boot": {
                "mode": self.boot.mode,
                "image": self.boot.image,
                "agent_version": self.boot.agent_version,
                "python_version": self.boot.python_version,
                "requirements": list(self.boot.requirements),
                "extra_script": self.boot.extra_script,
                "extra_clearml_conf": self.boot.extra_clearml_conf,
            },
            "limits": {
                "max_instances_total": self.limits.max_instances_total,
                "max_hourly_cost": self.limits.max_hourly_cost,
                "hourly_prices": dict(self.limits.hourly_prices),
                "spot_blackout_s": self.limits.spot_blackout_s,
                "max_consecutive_launch_failures": self.limits.max_consecutive_launch_failures,
                "lock_stale_after_s": self.limits.lock_stale_after_s,
            },
            "cloudwatch": None
            if self.cloudwatch is None
            else {
                "sns_topic": self.cloudwatch.sns_topic,
                "alarms": [dict(vars(alarm)) for alarm in self.cloudwatch.alarms],
            },
            "queues": {
                queue.name: {"resources": [_resource_dict(r) for r in queue.resources]}
                for queue in self.queues
            },
        }


def _resource_dict(resource: Resource) -> dict[str, Any]:
    return {
        "name": resource.name,
        "instance_type": resource.instance_type,
        "ami": resource.ami,
        "max_instances": resource.max_instances,
        "spot": resource.spot,
        "subnet": resource.subnet,
        "availability_zone": resource.availability_zone,
        "security_groups": list(resource.security_groups),
        "key_name": resource.key_name,
        "ebs_size_gb": resource.ebs_size_gb,
        "ebs_device_name": resource.ebs_device_name,
        "ebs_volume_type": resource.ebs_volume_type,
        "tags": dict(resource.tags),
        "cpu_only": resource.cpu_only,
    }


#: Scalar settings shown as editable parameters of the ClearML service task, with their types.
SCALAR_SETTINGS: dict[str, type] = {
    "region": str,
    "polling_interval_s": float,
    "idle_timeout_s": float,
    "spin_up_timeout_s": float,
    "workers_prefix": str,
    "create_missing_queues": bool,
}


# --------------------------------------------------------------------------------------- loading
def load_config(path: str | Path) -> AutoscalerConfig:
    """Read and validate an autoscaler YAML file.

    Raises:
        AutoscalerConfigError: the file is missing, not YAML, or a key is missing, unknown or
            invalid; the message names the file, the line and the key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AutoscalerConfigError(f"{path}: no such autoscaler config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AutoscalerConfigError(f"{path}: cannot read: {exc}") from None
    return config_from_yaml(text, source=str(path), base_dir=path.resolve().parent)


def config_from_yaml(text: str, source: str = "<config>", base_dir: Path | None = None) -> AutoscalerConfig:
    """Validate a YAML document (``source`` names it in errors; ``base_dir`` resolves paths)."""
    data, lines = compose(text, source)
    return _Reader(source, lines, base_dir).config(data)


def config_from_dict(data: Mapping[str, Any], source: str = "<config>") -> AutoscalerConfig:
    """Validate an already-parsed document (e.g. the one stored on the ClearML service task)."""
    return _Reader(source, {}, None).config(data)


def resource_keys(config: AutoscalerConfig) -> list[tuple[str, Resource]]:
    """(key such as ``queues.train.resources[0]``, resource) for every resource, in config order."""
    return [
        (f"queues.{queue.name}.resources[{index}]", resource)
        for queue in config.queues
        for index, resource in enumerate(queue.resources)
    ]


class _Reader(YamlReader):
    """Turns a parsed document into the typed config; every error names file, line and key."""

    def __init__(self, source: str, lines: dict[tuple, int], base_dir: Path | None) -> None:
        super().__init__(source, lines)
        self.base_dir = base_dir

    def tags(self, data: Mapping, path: tuple, key: str) -> tuple[tuple[str, str], ...]:
        value = self.mapping(data.get(key), (*path, key), tuple(str(k) for k in (data.get(key) or {})))
        out = []
        for tag, tag_value in value.items():
            where = (*path, key, tag)
            if isinstance(tag_value, bool) or not isinstance(tag_value, str | int | float):
                raise self.error(where, f"tag values are strings, got {tag_value!r}")
            tag_value = str(tag_value)
            # ClearML's driver passes tags as "k=v, k2=v2" (clearml.automation.cloud_driver.parse_tags)
            if not tag.strip() or "," in tag or "=" in tag or tag.lower().startswith("aws:"):
                raise self.error(where, "tag keys are non-empty, without ',' or '=', not starting 'aws:'")
            if not tag_value.strip() or "," in tag_value or len(tag) > 128 or len(tag_value) > 256:
                raise self.error(where, "tag values are non-empty, without ',', at most 256 characters")
            out.append((tag.strip(), tag_value.strip()))
        return tuple(out)

    # -- sections
    def config(self, data: Any) -> AutoscalerConfig:
        top = self.mapping(
            data,
            (),
            (
                "region",
                "polling_interval_s",
                "idle_timeout_s",
                "spin_up_timeout_s",
                "workers_prefix",
                "create_missing_queues",
                "secrets_in_ssm",
                "instance_profile_name",
                "instance_profile_arn",
                "service_project",
                "service_name",
                "tags",
                "boot",
                "limits",
                "cloudwatch",
                "queues",
            ),
        )
        region = self.string(top, (), "region", _REGION, "an AWS region such as eu-west-1")
        profile_name = self.string(top, (), "instance_profile_name", default=None)
        profile_arn = self.string(
            top,
            (),
            "instance_profile_arn",
            _INSTANCE_PROFILE_ARN,
            "arn:aws:iam::<account>:instance-profile/<name>",
            default=None,
        )
        if profile_name and profile_arn:
            raise self.error(("instance_profile_arn",), "give instance_profile_name or _arn, not both")
        queues = self.queues(top.get("queues"))
        config = AutoscalerConfig(
            region=region,
            queues=queues,
            polling_interval_s=self.seconds(top, (), "polling_interval_s", 30.0),
            idle_timeout_s=self.seconds(top, (), "idle_timeout_s", 600.0),
            spin_up_timeout_s=self.seconds(top, (), "spin_up_timeout_s", 900.0),
            workers_prefix=self.string(
                top, (), "workers_prefix", _NAME, "letters, digits, _ . -", default="fleetfl"
            ),
            create_missing_queues=self.boolean(top, (), "create_missing_queues", False),
            secrets_in_ssm=self.boolean(top, (), "secrets_in_ssm", True),
            instance_profile_name=profile_name,
            instance_profile_arn=profile_arn,
            tags=self.tags(top, (), "tags"),
            boot=self.boot(top.get("boot")),
            limits=read_limits(self, top.get("limits")),
            cloudwatch=read_cloudwatch(self, top.get("cloudwatch"), {queue.name for queue in queues}),
            service_project=self.string(top, (), "service_project", default="DevOps"),
            service_name=self.string(top, (), "service_name", default="FleetFL autoscaler"),
        )
        if config.polling_interval_s > 3600:
            raise self.error(("polling_interval_s",), "at most 3600 seconds (ClearML polls in minutes)")
        if config.spin_up_timeout_s < config.polling_interval_s:
            raise self.error(("spin_up_timeout_s",), "must be at least polling_interval_s")
        if config.limits.lock_stale_after_s < 2 * config.polling_interval_s:
            raise self.error(
                ("limits", "lock_stale_after_s"),
                "must be at least twice polling_interval_s (renewed every poll)",
            )
        if config.limits.max_hourly_cost is not None:
            for where, resource in resource_keys(config):
                if config.limits.price(resource.instance_type) is None:
                    raise self.error(
                        ("limits", "hourly_prices"),
                        f"no price for {resource.instance_type} ({where}); max_hourly_cost needs the "
                        "USD per hour of every instance type",
                    )
        return config

    def queues(self, value: Any) -> tuple[QueueConfig, ...]:
        path = ("queues",)
        if not value:
            raise self.error(path, "missing: at least one queue with its resources")
        queues = self.mapping(value, path, tuple(str(k) for k in value) if isinstance(value, Mapping) else ())
        out, seen = [], {}
        for name, section in queues.items():
            qpath = (*path, name)
            if not isinstance(name, str) or not _QUEUE.match(name):
                raise self.error(qpath, "queue names are non-empty, without ':' or surrounding spaces")
            section = self.mapping(section, qpath, ("resources",))
            items = section.get("resources")
            if not isinstance(items, list) or not items:
                raise self.error((*qpath, "resources"), "missing: a list of at least one resource")
            resources = []
            for index, item in enumerate(items):
                resource = self.resource(item, (*qpath, "resources", index))
                if resource.name in seen:
                    raise self.error(
                        (*qpath, "resources", index, "name"),
                        f"resource {resource.name!r} is already used by queue {seen[resource.name]!r} "
                        "(ClearML's AutoScaler maps each resource to one queue)",
                    )
                seen[resource.name] = name
                resources.append(resource)
            out.append(QueueConfig(name=name, resources=tuple(resources)))
        return tuple(out)

    def resource(self, value: Any, path: tuple) -> Resource:
        item = self.mapping(
            value,
            path,
            (
                "name",
                "instance_type",
                "ami",
                "max_instances",
                "spot",
                "subnet",
                "availability_zone",
                "security_groups",
                "key_name",
                "ebs_size_gb",
                "ebs_device_name",
                "ebs_volume_type",
                "tags",
                "cpu_only",
            ),
        )
        subnet = self.string(item, path, "subnet", _SUBNET, "subnet-<8 or 17 hex digits>", default=None)
        zone = self.string(item, path, "availability_zone", _ZONE, "a zone such as eu-west-1a", default=None)
        if not subnet and not zone:
            raise self.error((*path, "subnet"), "missing: give subnet (or availability_zone)")
        if subnet and zone:
            raise self.error((*path, "availability_zone"), "give subnet or availability_zone, not both")
        groups = item.get("security_groups") or []
        if not isinstance(groups, list):
            raise self.error((*path, "security_groups"), "expected a list of security group ids")
        for index, group in enumerate(groups):
            if not isinstance(group, str) or not _SECURITY_GROUP.match(group):
                raise self.error((*path, "security_groups", index), f"malformed security group id {group!r}")
        ami = item.get("ami")
        if ami is None:
            raise self.error((*path, "ami"), "missing (an AMI id such as ami-0abc12345678def00)")
        return Resource(
            name=self.string(item, path, "name", _NAME, "letters, digits, _ . - (no ':')"),
            instance_type=self.string(
                item, path, "instance_type", _INSTANCE_TYPE, "family.size, such as g4dn.xlarge"
            ),
            ami=self.string(item, path, "ami", _AMI, "ami-<8 or 17 hex digits>"),
            max_instances=self.integer(item, path, "max_instances", maximum=1000),
            spot=self.boolean(item, path, "spot", False),
            subnet=subnet,
            availability_zone=zone,
            security_groups=tuple(groups),
            key_name=self.string(item, path, "key_name", default=None),
            ebs_size_gb=self.integer(item, path, "ebs_size_gb", default=None, minimum=1, maximum=16384),
            ebs_device_name=self.string(
                item, path, "ebs_device_name", _DEVICE, "such as /dev/sda1", default="/dev/sda1"
            ),
            ebs_volume_type=self.choice(item, path, "ebs_volume_type", EBS_VOLUME_TYPES, "gp3"),
            tags=self.tags(item, path, "tags"),
            cpu_only=self.boolean(item, path, "cpu_only", False),
        )

    def boot(self, value: Any) -> BootConfig:
        path = ("boot",)
        boot = self.mapping(
            value,
            path,
            (
                "mode",
                "image",
                "agent_version",
                "python_version",
                "requirements",
                "extra_script",
                "extra_clearml_conf",
            ),
        )
        mode = self.choice(boot, path, "mode", BOOT_MODES, "agent")
        image = self.string(boot, path, "image", _IMAGE, "a docker image reference", default=None)
        if mode == "image" and not image:
            raise self.error((*path, "image"), "missing: boot.mode image needs the worker image to run")
        extra_script = boot.get("extra_script") or ""
        extra_conf = boot.get("extra_clearml_conf") or ""
        for key, text in (("extra_script", extra_script), ("extra_clearml_conf", extra_conf)):
            if not isinstance(text, str):
                raise self.error((*path, key), "expected text")
        return BootConfig(
            mode=mode,
            image=image,
            agent_version=self.string(
                boot, path, "agent_version", _VERSION, "such as 3.0.3", default=DEFAULT_AGENT_VERSION
            ),
            python_version=self.string(
                boot, path, "python_version", _VERSION, "such as 3.11", default="3.11"
            ),
            requirements=self.requirements(boot.get("requirements"), (*path, "requirements"), mode),
            extra_script=extra_script,
            extra_clearml_conf=extra_conf,
        )

    def requirements(self, value: Any, path: tuple, mode: str) -> tuple[str, ...]:
        """A requirements file (path) or a list of pins; read now so the config is self-contained."""
        if value is None:
            value = "requirements.txt" if mode == "agent" else []
        if isinstance(value, list):
            lines = value
        elif isinstance(value, str):
            candidates = (
                [Path(value)]
                if Path(value).is_absolute()
                else [*([self.base_dir / value] if self.base_dir else []), REPO_ROOT / value]
            )
            found = next((p for p in candidates if p.is_file()), None)
            if found is None:
                raise self.error(
                    path,
                    f"requirements file {value!r} not found (looked in "
                    f"{', '.join(str(p.parent) for p in candidates)})",
                )
            lines = found.read_text(encoding="utf-8").splitlines()
        else:
            raise self.error(path, "expected a requirements file path or a list of requirements")
        out = []
        for index, line in enumerate(lines):
            if not isinstance(line, str):
                raise self.error((*path, index), f"expected a requirement string, got {line!r}")
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("-") or "'" in line or "\n" in line:
                raise self.error(path, f"unsupported requirement line {line!r} (plain pins only)")
            out.append(line)
        return tuple(out)


def config_with_settings(
    document: Mapping[str, Any], settings: Mapping[str, Any], source: str
) -> AutoscalerConfig:
    """Validate ``document`` with its scalar settings taken from ``settings``.

    The ClearML service task keeps the scalar settings as editable parameters (the UI returns them
    as strings: ``"45"`` seconds, ``"true"``/``"false"`` flags are read as such) and the rest of the
    document as a configuration object; this puts the two back together.
    """
    merged = dict(document)
    for key, value in settings.items():
        if key not in SCALAR_SETTINGS:
            known = ", ".join(SCALAR_SETTINGS)
            raise AutoscalerConfigError(f"{source}: {key}: not an editable setting (known: {known})")
        merged[key] = _parse_setting(SCALAR_SETTINGS[key], value)
    return config_from_dict(merged, source=source)


def split_settings(config: AutoscalerConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """``config`` as (scalar settings, rest of the document): the inverse of :func:`config_with_settings`."""
    document = config.to_dict()
    settings = {key: document.pop(key) for key in SCALAR_SETTINGS}
    return settings, document


def _parse_setting(kind: type, value: Any) -> Any:
    """A UI string as ``kind`` (left as it is when it does not parse: validation names it)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if kind is bool:
        return {"true": True, "false": False}.get(text.lower(), value)
    if kind is float:
        try:
            return float(text)
        except ValueError:
            return value
    return text
