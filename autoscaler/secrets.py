"""ClearML credentials for the workers: in SSM Parameter Store, not in the instances' user data.

ClearML's driver writes the ClearML key pair (and the git credentials of
``CLEARML_AUTOSCALER_GIT_USER/PASSWORD``) into every instance's user data, which anyone allowed
``ec2:DescribeInstanceAttribute`` and every task on the instance (through the metadata service) can
read, and its boot script runs under ``set -x``. With ``secrets_in_ssm: true`` (the default) the
scaler stores them at start in one SecureString parameter, ``/fleetfl/<workers_prefix>/clearml``
(encrypted with the account's ``aws/ssm`` key), and the boot script reads it with the instance
profile (``ssm:GetParameter``), with tracing off, into the agent's environment.
"""

from __future__ import annotations

import json
import os
import shlex
from typing import Any

from clearml.automation.cloud_driver import env_git_pass, env_git_user

#: boto3 release installed on the instances to read the parameter (the one FleetFL is tested with).
BOTO3_VERSION = "1.44.18"

#: Environment variables the boot script sets from the parameter, and the parameter's JSON keys.
_EXPORTS = (
    ("CLEARML_API_ACCESS_KEY", "access_key"),
    ("CLEARML_API_SECRET_KEY", "secret_key"),
    ("CLEARML_AGENT_GIT_USER", "git_user"),
    ("CLEARML_AGENT_GIT_PASS", "git_pass"),
)


def parameter_name(workers_prefix: str) -> str:
    """The SSM parameter holding the workers' ClearML credentials."""
    return f"/fleetfl/{workers_prefix}/clearml"


def store_credentials(ssm: Any, name: str, access_key: str, secret_key: str) -> None:
    """Write the ClearML key pair (and the git credentials from the environment) as a SecureString."""
    value = {
        "access_key": access_key,
        "secret_key": secret_key,
        "git_user": os.environ.get(env_git_user, ""),
        "git_pass": os.environ.get(env_git_pass, ""),
    }
    ssm.put_parameter(
        Name=name,
        Description="FleetFL autoscaler: ClearML credentials of the workers (read at boot)",
        Value=json.dumps(value),
        Type="SecureString",
        Overwrite=True,
    )


def boot_lines(name: str, region: str) -> list[str]:
    """Bash lines that read the parameter with the instance profile and export the credentials,
    with ``set -x`` tracing off while they run (ClearML's script traces everything else)."""
    keys = ", ".join(repr(key) for _, key in _EXPORTS)
    reader = (
        "import boto3, json; "
        f"v = json.loads(boto3.client('ssm', region_name={region!r}).get_parameter("
        f"Name={name!r}, WithDecryption=True)['Parameter']['Value']); "
        f"print(chr(10).join(v.get(k, '') for k in ({keys})))"
    )
    reads = "; ".join(f"read -r {variable}" for variable, _ in _EXPORTS)
    return [
        "# ClearML credentials from SSM Parameter Store (SecureString, instance profile); not traced",
        "{ set +x; } 2>/dev/null",
        f"python -m pip install --quiet boto3=={BOTO3_VERSION}",
        f"{{ {reads}; }} < <(python -c {shlex.quote(reader)})",
        "export " + " ".join(variable for variable, _ in _EXPORTS),
        "set -x",
    ]
