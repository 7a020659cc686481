"""A real S3-protocol server on 127.0.0.1 for the object store's tests and
benchmark: moto's standalone server (``moto[server]`` from PyPI), in a process
of its own.

With ``authenticated=True`` the server checks every request's signature
against the IAM users it knows; the fixture spends the few unauthenticated
requests moto allows on creating one user with full access, whose key pair is
then the only one accepted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen

from openimages_crawler.testing.scrapyd import free_port

# Any key pair works against an unauthenticated server; boto3 still wants one.
ANONYMOUS = ("testing", "testing")
REGION = "us-east-1"
_FULL_ACCESS = json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
})


@dataclass
class S3Server:
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    access_key: str = ANONYMOUS[0]
    secret_key: str = ANONYMOUS[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The AWS environment a crawl process would be given."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": REGION}

    def client(self, access_key: str | None = None, secret_key: str | None = None):  # noqa: ANN201
        import boto3  # noqa: PLC0415

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
        )

    def make_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_s3_server(folder: Path, *, authenticated: bool = False) -> S3Server:
    """moto's server on a free port of 127.0.0.1, answering within 30 s."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    if authenticated:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"  # create_user, create_access_key, put_user_policy
    log = folder / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    server = S3Server(port, process, log)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urlopen(f"{server.endpoint}/moto-api/", timeout=1):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"the S3 server did not start: {log.read_text(errors='replace')[-2000:]}") from None
            time.sleep(0.1)
    if authenticated:
        import boto3  # noqa: PLC0415

        iam = boto3.session.Session().client("iam", endpoint_url=server.endpoint, region_name=REGION,
                                             aws_access_key_id=ANONYMOUS[0],
                                             aws_secret_access_key=ANONYMOUS[1])
        iam.create_user(UserName="crawler")
        key = iam.create_access_key(UserName="crawler")["AccessKey"]
        iam.put_user_policy(UserName="crawler", PolicyName="all", PolicyDocument=_FULL_ACCESS)
        server.access_key, server.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
    return server
