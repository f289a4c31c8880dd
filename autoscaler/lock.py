"""One scaler per ``workers_prefix``: a lock held in EC2 itself.

Two scalers over the same instances would each launch up to the caps (two services agents, or
``run`` started while the service task runs). The lock is an EC2 launch template named
``fleetfl-autoscaler-lock-<workers_prefix>``: creating one whose name exists fails atomically
(``InvalidLaunchTemplateName.AlreadyExistsException``), it costs nothing, and it lives in the same
account and region as the instances it protects. Its tags say who holds it (``holder``) and when the
holder last renewed it (``heartbeat``, seconds since the epoch, renewed every poll).

A lock not renewed for ``limits.lock_stale_after_s`` belongs to a scaler that died without releasing
it: it is deleted *by its id* and created anew. Deleting by id means that of two scalers taking over
the same stale lock, the second one's delete fails (the id is gone) and it finds the first one's
fresh lock instead of removing it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import Any

from botocore.exceptions import ClientError

log = logging.getLogger(__name__)

LOCK_PREFIX = "fleetfl-autoscaler-lock-"
_EXISTS = "InvalidLaunchTemplateName.AlreadyExistsException"
_NOT_FOUND = ("InvalidLaunchTemplateName.NotFoundException", "InvalidLaunchTemplateId.NotFound")


class ScalerLockError(RuntimeError):
    """Another live scaler holds the lock, or this one lost it."""


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


class ScalerLock:
    """The lock of the scaler of ``workers_prefix`` (``ec2``: a boto3 EC2 client)."""

    def __init__(self, ec2: Any, workers_prefix: str, stale_after_s: float) -> None:
        self.ec2 = ec2
        self.name = f"{LOCK_PREFIX}{workers_prefix}"
        self.stale_after_s = stale_after_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.template_id: str | None = None

    def _tags(self) -> list[dict[str, str]]:
        return [{"Key": "holder", "Value": self.holder}, {"Key": "heartbeat", "Value": f"{time.time():.0f}"}]

    def _create(self) -> bool:
        try:
            created = self.ec2.create_launch_template(
                LaunchTemplateName=self.name,
                LaunchTemplateData={},
                VersionDescription="FleetFL autoscaler lock (launches nothing)",
                TagSpecifications=[{"ResourceType": "launch-template", "Tags": self._tags()}],
            )
        except ClientError as exc:
            if _code(exc) == _EXISTS:
                return False
            raise
        self.template_id = created["LaunchTemplate"]["LaunchTemplateId"]
        return True

    def current(self) -> tuple[str, dict[str, str]] | None:
        """(template id, tags) of the lock as EC2 has it now; None when there is none."""
        try:
            templates = self.ec2.describe_launch_templates(LaunchTemplateNames=[self.name])["LaunchTemplates"]
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            raise
        if not templates:
            return None
        template_id = templates[0]["LaunchTemplateId"]
        tags = self.ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [template_id]}])["Tags"]
        return template_id, {tag["Key"]: tag["Value"] for tag in tags}

    def acquire(self) -> None:
        """Take the lock, or raise :class:`ScalerLockError` naming the live scaler that holds it."""
        for _ in range(3):
            if self._create():
                log.info("scaler lock %s taken (%s)", self.name, self.holder)
                return
            found = self.current()
            if found is None:
                continue  # released meanwhile: try again
            template_id, tags = found
            try:
                age = time.time() - float(tags.get("heartbeat", "0"))
            except ValueError:
                age = float("inf")
            if age <= self.stale_after_s:
                raise ScalerLockError(
                    f"another autoscaler with workers_prefix {self.name[len(LOCK_PREFIX) :]!r} is running "
                    f"({tags.get('holder', 'unknown holder')}, renewed {age:.0f} s ago): refusing to start a "
                    f"second one (its lock is the EC2 launch template {self.name}; it is taken over once "
                    f"not renewed for {self.stale_after_s:.0f} s)"
                )
            log.warning(
                "taking over the scaler lock %s of %s, not renewed for %.0f s (a scaler that died)",
                self.name,
                tags.get("holder", "an unknown holder"),
                age,
            )
            try:
                self.ec2.delete_launch_template(LaunchTemplateId=template_id)
            except ClientError as exc:
                if _code(exc) not in _NOT_FOUND:
                    raise  # gone: another scaler took it over first; the next round finds its lock
        raise ScalerLockError(f"could not take the scaler lock {self.name}: it keeps changing hands")

    def renew(self) -> None:
        """Renew the heartbeat; raise :class:`ScalerLockError` if another scaler took the lock."""
        found = self.current()
        if found is None or found[0] != self.template_id or found[1].get("holder") != self.holder:
            raise ScalerLockError(
                f"lost the scaler lock {self.name} (taken over by "
                f"{found[1].get('holder') if found else 'nobody'}): this scaler stops"
            )
        self.ec2.create_tags(Resources=[self.template_id], Tags=self._tags()[1:])

    def release(self) -> None:
        """Give the lock back (only if this scaler still holds it)."""
        if self.template_id is None:
            return
        try:
            found = self.current()
            if found is not None and found[0] == self.template_id:
                self.ec2.delete_launch_template(LaunchTemplateId=self.template_id)
        except ClientError as exc:
            log.warning("could not release the scaler lock %s: %s", self.name, exc)
        self.template_id = None
