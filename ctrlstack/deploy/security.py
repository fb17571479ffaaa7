"""Per-cluster TLS credentials: every cluster, local ones included, speaks only mutual TLS.

Why: a login node is shared by hundreds of users and loopback is reachable by all of them.  A
scheduler without authentication runs whatever any local user submits, as the cluster's owner.
Each cluster therefore gets a fresh key and self-signed certificate (it is its own CA), written
0600 into the cluster's private directory (0700, inside the 0700 state dir).  Scheduler, workers
and clients all present it and require it of the peer (distributed's ``Security`` with
``require_encryption``), so only processes that can read the owner's files can connect.

The key is ECDSA P-256 rather than distributed's ``Security.temporary()`` RSA-2048: generating it
takes well under a millisecond instead of tens, which every launch pays.

Batch jobs read the same files on the compute node through the shared home; nothing secret is
put on a command line or into a world-readable file.
"""

from __future__ import annotations

import datetime
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctrlstack.errors import UserError

if TYPE_CHECKING:
    from distributed.security import Security

__all__ = ["CERT_FILE", "KEY_FILE", "Credentials", "CredentialsError"]

CERT_FILE = "cluster.pem"
KEY_FILE = "cluster.key"

#: Certificates outlive any cluster; a long-running one must not see its TLS expire.
VALIDITY = datetime.timedelta(days=3650)


class CredentialsError(UserError):
    """The credentials of a cluster are missing or readable by others (refused, never used)."""

    http_status = 403


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` 0600 with ``data``; refuses to follow or replace an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


@dataclass(frozen=True)
class Credentials:
    """Paths of one cluster's certificate (also its CA) and private key."""

    cert: Path
    key: Path

    @classmethod
    def create(cls, directory: str | os.PathLike[str]) -> Credentials:
        """Generate fresh credentials in ``directory`` (created 0700; must not hold any yet)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ctrlstack-cluster")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))  # clock skew between nodes
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName("ctrlstack-cluster")]), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        creds = cls(directory / CERT_FILE, directory / KEY_FILE)
        _write_private(
            creds.key,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        _write_private(creds.cert, cert.public_bytes(serialization.Encoding.PEM))
        return creds

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Credentials:
        """The credentials in ``directory``, checked: regular files, ours, not readable by others.

        A key that others can read is no secret any more; refusing it (instead of using it)
        makes a mis-set permission visible rather than a silent hole.
        """
        directory = Path(directory)
        creds = cls(directory / CERT_FILE, directory / KEY_FILE)
        for path in (creds.cert, creds.key):
            try:
                info = os.lstat(path)
            except OSError as exc:
                raise CredentialsError(
                    f"cluster credentials {str(path)!r} cannot be read ({exc.strerror}); the "
                    "cluster was started by another user, on a host without this home, or its "
                    "state dir was removed"
                ) from None
            if not stat.S_ISREG(info.st_mode):
                raise CredentialsError(f"cluster credentials {str(path)!r} are not a regular file")
            if info.st_uid != os.getuid():
                raise CredentialsError(
                    f"cluster credentials {str(path)!r} belong to uid {info.st_uid}, not to you"
                )
            if info.st_mode & 0o077:
                raise CredentialsError(
                    f"cluster credentials {str(path)!r} are readable by others (mode "
                    f"{stat.S_IMODE(info.st_mode):o}); refusing to use them — stop the cluster "
                    "and launch it again"
                )
        return creds

    def security(self) -> Security:
        """A distributed ``Security`` for every role (scheduler, worker, client), TLS required."""
        from distributed.security import Security

        cert, key = str(self.cert), str(self.key)
        return Security(
            require_encryption=True,
            tls_ca_file=cert,
            tls_client_cert=cert,
            tls_client_key=key,
            tls_scheduler_cert=cert,
            tls_scheduler_key=key,
            tls_worker_cert=cert,
            tls_worker_key=key,
        )

    def dask_config(self) -> dict[str, Any]:
        """The same as ``distributed.comm`` config (for ``dask.config.set``)."""
        cert, key = str(self.cert), str(self.key)
        return {
            "distributed.comm.require-encryption": True,
            "distributed.comm.tls.ca-file": cert,
            "distributed.comm.tls.client.cert": cert,
            "distributed.comm.tls.client.key": key,
            "distributed.comm.tls.scheduler.cert": cert,
            "distributed.comm.tls.scheduler.key": key,
            "distributed.comm.tls.worker.cert": cert,
            "distributed.comm.tls.worker.key": key,
        }

    def env(self) -> dict[str, str]:
        """The same as ``DASK_DISTRIBUTED__COMM__...`` variables, for a child process (a script
        run by ``ctrlstack run``, a batch job) whose plain ``distributed.Client()`` must connect.
        Only paths travel, never key material."""
        out = {}
        for key, value in self.dask_config().items():
            parts = key.split(".")
            name = "DASK_" + "__".join(p.upper().replace("-", "_") for p in parts)
            out[name] = str(value)
        return out
