"""Real deployment: a SuperLink and SuperNodes as separate processes, TLS, node authentication.

    python -m asyncfl.tools.deploy local --nodes 3 --run-config "strategy='fedbuff' clock='wall'"
    python -m asyncfl.tools.deploy local --nodes 2 --insecure  # only when asked for
    python -m asyncfl.tools.deploy certs --hosts superlink.example.org --folder certs
    python -m asyncfl.tools.deploy node-key node0 --folder keys

On one machine everything listens on 127.0.0.1. `Deployment` generates a CA, a certificate
for the SuperLink's address and one ECDSA key per node (files in its folder), starts
`flower-superlink` with TLS and `--enable-supernode-auth`, registers every node's public key
with `flwr supernode register`, starts the SuperNodes (each with its own FLWR_HOME, port and
`partition-id`, and optionally a declared `step-delay`), runs `flwr run <app> <connection>`,
and stops every process it started by its process group, also when the run fails.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from logging import INFO
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flwr.common.logger import log

from asyncfl.tools.processes import free_port, stop_process_group
from asyncfl.tools.run_config import (
    format_run_config,
    parse_run_config,
    resolve_run,
    written_results,
)
from asyncfl.tools.superlink import flower_env, flower_executable

ROOT = Path(__file__).resolve().parents[2]
CONNECTION = "asyncfl-deploy"


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_certificates(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
                      days: int = 30) -> dict[str, Path]:
    """A CA and a certificate for the SuperLink valid for `hosts` (IP addresses or names)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    validity = dict(not_valid_before=now - datetime.timedelta(minutes=5),
                    not_valid_after=now + datetime.timedelta(days=days))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "asyncfl deployment CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(validity["not_valid_before"])
          .not_valid_after(validity["not_valid_after"])
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(validity["not_valid_before"])
            .not_valid_after(validity["not_valid_after"])
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(_pem(key))
    paths["key"].chmod(0o600)
    return paths


def make_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """An ECDSA key pair in OpenSSH format, as SuperNode authentication expects."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH))
    return private, public


#: how long a restarted SuperNode may be refused: until the SuperLink has marked it offline
#: (HEARTBEAT_PATIENCE x HEARTBEAT_DEFAULT_INTERVAL = 2 x 30 s in Flower 1.41-1.42), and more
REJOIN_SECONDS = 120.0
#: how long a start is watched for an activation refusal (which comes within seconds)
ACTIVATION_SECONDS = 15.0
#: Flower's SuperExec (one per SuperNode, one in the SuperLink) asks its parent for a new task
#: every FLWR_SUPEREXEC_TASK_POLL_INTERVAL seconds (Flower 1.41-1.42: 1.0 by default, 0.01 to
#: 60 allowed): each message to a node waits for that poll before its ClientApp process starts
TASK_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"


@dataclass
class Deployment:
    """A SuperLink and `nodes` SuperNodes on 127.0.0.1, stopped by PID on exit."""

    folder: Path
    nodes: int
    secure: bool = True
    step_delays: list[float] = field(default_factory=list)
    #: seconds between the SuperExecs' task polls (None: Flower's default, 1 s)
    task_poll_interval: float | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    #: how each process was started (command, environment), to start it again
    commands: dict[str, tuple[list[str], dict]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder).resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.home = self.folder / "flwr-home"
        self.home.mkdir(exist_ok=True)
        self.env = flower_env(self.home)
        if self.task_poll_interval is not None:
            if not 0.01 <= self.task_poll_interval <= 60:
                raise ValueError("task_poll_interval must be between 0.01 and 60 seconds "
                                 f"(Flower's bounds), got {self.task_poll_interval}")
            self.env[TASK_POLL_ENV] = f"{self.task_poll_interval:g}"
        self.port = free_port()

    def __enter__(self) -> Deployment:
        try:
            self._start_superlink()
            for i in range(self.nodes):
                self.start_node(i)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, name: str, command: list[str], env: dict | None = None) -> subprocess.Popen:
        env = env or self.env
        log = (self.folder / f"{name}.log").open("a")
        process = subprocess.Popen(command, env=env, cwd=self.folder, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name], self.commands[name] = process, (command, env)
        return process

    def _start_superlink(self) -> None:
        tls: list[str] = ["--insecure"]
        address = f'address = "127.0.0.1:{self.port}"\n'
        if self.secure:
            certs = make_certificates(self.folder / "certs")
            tls = ["--ssl-ca-certfile", str(certs["ca"]), "--ssl-certfile", str(certs["cert"]),
                   "--ssl-keyfile", str(certs["key"]), "--enable-supernode-auth"]
            address += f'root-certificates = "{certs["ca"]}"\n'
        else:
            address += "insecure = true\n"
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n{address}')
        self._spawn("superlink", [
            flower_executable("flower-superlink"), *tls,
            "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--control-api-address", f"127.0.0.1:{free_port()}"])
        deadline = time.monotonic() + 60
        while "Starting Flower SuperExec" not in self.log("superlink"):
            if self.processes["superlink"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"flower-superlink did not start:\n{self.log('superlink')}")
            time.sleep(0.2)

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def register(self, public_key: Path) -> None:
        """Add a node's public key to the federation (`flwr supernode register`)."""
        done = subprocess.run([flower_executable("flwr"), "supernode", "register",
                               str(public_key), CONNECTION], env=self.env,
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or "registered successfully" not in done.stdout:
            raise RuntimeError(f"registering {public_key} failed:\n{done.stdout}{done.stderr}")

    def start_node(self, i: int, *, register: bool = True, with_ca: bool = True,
                   name: str | None = None) -> subprocess.Popen:
        """SuperNode i (partition i of `nodes`), its own FLWR_HOME and port."""
        name = name or f"node{i}"
        home = self.folder / f"{name}-home"
        home.mkdir(exist_ok=True)
        node_config = f"partition-id={i} num-partitions={self.nodes}"
        if i < len(self.step_delays) and self.step_delays[i] > 0:
            node_config += f" step-delay={self.step_delays[i]}"
        command = [flower_executable("flower-supernode"), "--superlink", f"127.0.0.1:{self.port}",
                   "--port", str(free_port()), "--node-config", node_config]
        if self.secure:
            private, public = make_node_key(self.folder / "keys", name)
            if register:
                self.register(public)
            command += ["--auth-supernode-private-key", str(private)]
            if with_ca:
                command += ["--root-certificates", str(self.folder / "certs" / "ca.crt")]
        else:
            command += ["--insecure"]
        return self._spawn(name, command, {**self.env, "FLWR_HOME": str(home)})

    def stop_node(self, name: str, kill: bool = False) -> None:
        """Stop node `name` by its process group; `kill`: SIGKILL, as a crash (the node
        cannot sign off at the SuperLink)."""
        stop_process_group(self.processes[name], kill)

    def restart_node(self, name: str, rejoin: float = REJOIN_SECONDS) -> subprocess.Popen:
        """Start a stopped node again as it was (same key, port choice, partition): the
        SuperLink knows it by its key, so it comes back as the same node. A node that died
        without signing off stays online at the SuperLink until it has missed its heartbeats
        (Flower 1.41-1.42: 2 x 30 s), and refuses it meanwhile ("Failed to activate
        SuperNode", exit code 305): then it is started again with backoff (2, 4, 8, ... s,
        each try logged) for up to `rejoin` seconds. Returns the running process."""
        stop_process_group(self.processes[name])
        deadline, pause = time.monotonic() + rejoin, 2.0
        while True:
            seen = len(self.log(name))
            process = self._spawn(name, *self.commands[name])
            refused = self._refused(name, process, seen)
            if not refused or time.monotonic() + pause > deadline:
                return process
            log(INFO, "%s: the SuperLink still holds the node online (its heartbeat has not "
                "expired); trying again in %.0f s", name, pause)
            time.sleep(pause)
            pause = min(2 * pause, 16.0)

    def _refused(self, name: str, process: subprocess.Popen, seen: int) -> bool:
        """Whether the node just started was refused activation (it exits at once then)."""
        deadline = time.monotonic() + ACTIVATION_SECONDS
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        return (process.poll() not in (None, 0)
                and "Failed to activate SuperNode" in self.log(name)[seen:])

    def stop(self) -> None:
        """Stop every process this started (nodes first), by process group."""
        for name in sorted(self.processes, key=lambda n: n == "superlink"):
            stop_process_group(self.processes[name])

    def run(self, overrides: dict, app: Path = ROOT, timeout: float = 1800) -> Path:
        """`flwr run` the app on this deployment; the results folder of the run."""
        overrides, config = resolve_run({"num-clients": self.nodes, **overrides})
        with (self.folder / "run.log").open("a") as log:
            subprocess.run([flower_executable("flwr"), "run", str(app), CONNECTION, "--stream",
                            "--run-config", format_run_config(overrides)], env=self.env, stdout=log,
                           stderr=subprocess.STDOUT, timeout=timeout, check=False)
        return written_results(config, f"; see {self.folder}/run.log")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    local = sub.add_parser("local", help="SuperLink + SuperNodes on 127.0.0.1, one run")
    local.add_argument("--nodes", type=int, default=2)
    local.add_argument("--run-config", default="", help="run-config overrides, as for flwr run")
    local.add_argument("--step-delays", default="",
                       help="seconds per local step each node declares, e.g. 0,0.5,1")
    local.add_argument("--folder", default="deploy-run", help="certificates, keys and logs")
    local.add_argument("--task-poll-interval", type=float, default=None,
                       help="seconds between the SuperExecs' task polls (Flower's "
                            f"{TASK_POLL_ENV}; default: Flower's, 1 s)")
    local.add_argument("--insecure", action="store_true",
                       help="no TLS and no node authentication (only when asked for)")
    certs = sub.add_parser("certs", help="a CA and the SuperLink's certificate")
    certs.add_argument("--hosts", default="127.0.0.1,localhost",
                       help="addresses or names the SuperLink is reached at")
    certs.add_argument("--folder", default="certs")
    key = sub.add_parser("node-key", help="a SuperNode's key pair (OpenSSH ECDSA)")
    key.add_argument("name")
    key.add_argument("--folder", default="keys")
    args = parser.parse_args(argv)
    if args.command == "certs":
        paths = make_certificates(Path(args.folder), tuple(args.hosts.split(",")))
        print("\n".join(f"{k}: {v}" for k, v in paths.items()))
        return 0
    if args.command == "node-key":
        print("\n".join(str(p) for p in make_node_key(Path(args.folder), args.name)))
        return 0
    if args.command != "local":
        parser.print_help()
        return 2
    overrides = parse_run_config(args.run_config)
    delays = [float(x) for x in args.step_delays.split(",")] if args.step_delays else []
    with Deployment(Path(args.folder), args.nodes, not args.insecure, delays,
                    args.task_poll_interval) as deployment:
        out = deployment.run(overrides)
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the cleanup on SIGTERM too
    sys.exit(main())
