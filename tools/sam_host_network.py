"""`sam` whose `--docker-network host` really puts the function containers on the host network.

aws-sam-cli (1.170) creates every function container on the daemon's default network, publishes
the emulator's port 8080 on 127.0.0.1:<free port>, and for `--docker-network NAME` connects the
container to NAME afterwards; for `host` it skips that step (a container cannot be connected to
the host network), so the container stays on the default network. A docker daemon started with
`--bridge=none` has no default bridge: such a container gets a loopback interface only, its
published port leads nowhere and it cannot reach services on the host.

Run as `python tools/sam_host_network.py ARGS...` (in the aws-sam-cli environment), it is `sam
ARGS...`, except that with `--docker-network host` a function container is created with the
host's network, and its Runtime Interface Emulator listens on 127.0.0.1:<the port sam chose>
(instead of 0.0.0.0:8080) with its Runtime API on another free port of 127.0.0.1, so several
containers (start-api, warm containers) do not collide. Everything stays on 127.0.0.1.

`sam local --env-vars` only overrides variables the template declares. A local run also needs
some the deployed functions must not have, such as `AWS_ENDPOINT_URL_S3` (boto3's S3 endpoint: a
local S3 emulator): `SAM_LOCAL_CONTAINER_ENV=file.json` (an object of names and string values)
adds them to every function container.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

RIE = "/var/rapid/aws-lambda-rie"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _extra_env() -> dict[str, str]:
    path = os.environ.get("SAM_LOCAL_CONTAINER_ENV")
    if not path:
        return {}
    values = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
        raise SystemExit(f"{path}: SAM_LOCAL_CONTAINER_ENV must name a JSON object of strings")
    return values


def _patch() -> None:
    from docker.models.containers import ContainerCollection
    from samcli.local.docker.container import Container
    from samcli.local.lambdafn.env_vars import EnvironmentVariables

    extra = _extra_env()
    if extra:
        resolve = EnvironmentVariables.resolve

        def resolve_with_extra(self: Any) -> dict[str, str]:
            return {**resolve(self), **extra}

        EnvironmentVariables.resolve = resolve_with_extra

    original = Container.create

    def create(self: Any, context: Any) -> Any:
        if self.network_id == "host":
            self._container_opts = {**(self._container_opts or {}), "network_mode": "host"}
            entrypoint = list(self._entrypoint or [])
            if entrypoint and entrypoint[0] == RIE:
                self._entrypoint = [
                    *entrypoint,
                    "--runtime-interface-emulator-address",
                    f"127.0.0.1:{self.rapid_port_host}",
                    "--runtime-api-address",
                    f"127.0.0.1:{_free_port()}",
                ]
            # Published ports mean nothing on the host network (docker refuses them there).
            self._exposed_ports = None
        return original(self, context)

    Container.create = create

    create_container = ContainerCollection.create

    def create_without_ports(self: Any, image: Any, command: Any = None, **kwargs: Any) -> Any:
        if kwargs.get("network_mode") == "host":
            kwargs.pop("ports", None)
        return create_container(self, image, command, **kwargs)

    ContainerCollection.create = create_without_ports


def main() -> int:
    _patch()
    from samcli.cli.main import cli

    sys.argv[0] = "sam"
    return int(cli() or 0)


if __name__ == "__main__":
    sys.exit(main())
