"""Container images of the lab, and podman as a Docker engine on machines without one.

Dockerfiles (docker/), with their base images as build arguments so the same files build
from a registry (users: the top-level docker-compose.yml) or from local images (machines with
no registry):

    docker/Dockerfile         target project: python + requirements.lock + the lab packages;
                              target device: project + geth (a device's node + optimizer)
    docker/geth.Dockerfile    geth node image (GETH_IMAGE, ethereum/client-go:v1.13.15)

Offline (`python -m lab.images build-offline`, DESIGN.md / shared/CONTAINERS.md):

    debootstrap --variant=minbase bookworm  ->  podman import  ->  localhost/ecl-debian:bookworm
        (python3, python3-venv, ca-certificates: stands in for python:3.11-slim)
    docker/geth-local.Dockerfile: that base + tools/bin/geth  ->  stands in for client-go
    then the three Dockerfiles above with those images as build arguments.

Images already present are reused (`--force` rebuilds). The podman store lives in
build/podman/ of the repository (kept between runs: it is the image cache), configured with
runc and explicit ulimits (crun fails on these machines, see CONTAINERS.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

from chain.processes import stop_popen

REPO = Path(__file__).resolve().parents[1]
DOCKER_DIR = REPO / "docker"
PODMAN_DIR = Path(os.environ.get("LAB_PODMAN_DIR", REPO / "build" / "podman"))

# image names the compose file refers to (overridable, e.g. to a registry of one's own)
PROJECT_IMAGE = os.environ.get("LAB_PROJECT_IMAGE", "localhost/energy-chain-lab:latest")
GETH_NODE_IMAGE = os.environ.get("LAB_GETH_IMAGE", "localhost/energy-chain-lab-geth:v1.13.15")
DEVICE_IMAGE = os.environ.get("LAB_DEVICE_IMAGE", "localhost/energy-chain-lab-device:latest")
# upstream bases (users) and their offline stand-ins (built here)
UPSTREAM = {"python": "python:3.11-slim", "geth": "ethereum/client-go:v1.13.15"}
OFFLINE_BASE = "localhost/ecl-debian:bookworm"
OFFLINE_GETH = "localhost/ecl-geth-local:v1.13.15"
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
DEBIAN_MIRROR = os.environ.get("LAB_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# what the project image needs from the repository (a staged build context keeps .venv,
# runs/ and build/ out of it, with or without a .dockerignore)
CONTEXT_FILES = ("pyproject.toml", "requirements.lock", "README.md")
CONTEXT_PACKAGES = ("lab", "chain", "aggregator_contract", "device_node", "mqtt_bridge",
                    "scenario", "conventions",
                    "metering")

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
"""


class ImageError(RuntimeError):
    pass


# -- podman ------------------------------------------------------------------------------


@dataclass
class Podman:
    """podman with its store in a folder of ours (root, runroot, containers.conf)."""

    root: Path = PODMAN_DIR

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()

    @property
    def conf(self) -> Path:
        path = self.root / "containers.conf"
        if not path.exists() or path.read_text() != CONTAINERS_CONF:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(CONTAINERS_CONF)
        return path

    def env(self) -> dict[str, str]:
        return dict(os.environ, CONTAINERS_CONF=str(self.conf))

    def argv(self, *args: str) -> list[str]:
        exe = shutil.which("podman")
        if exe is None:
            raise ImageError("podman is not installed (apt-get install -y podman runc)")
        return [exe, "--root", str(self.root / "storage"), "--runroot",
                str(self.root / "run"), *args]

    def run(self, *args: str, check: bool = True, capture: bool = True,
            **kw) -> subprocess.CompletedProcess:
        p = subprocess.run(self.argv(*args), env=self.env(), text=True,
                           capture_output=capture, **kw)
        if check and p.returncode != 0:
            raise ImageError(f"podman {' '.join(args[:3])} failed ({p.returncode}):\n"
                             f"{(p.stderr or '')[-3000:]}")
        return p

    def has_image(self, name: str) -> bool:
        return self.run("image", "exists", name, check=False).returncode == 0


@dataclass
class PodmanService:
    """`podman system service` answering the Docker API on a unix socket, for docker-compose
    and the docker SDK. Started and stopped by pid; its socket lives in `sock_dir` (keep that
    path short: a unix socket path has at most 107 bytes), its log in `log_dir` (default
    sock_dir)."""

    sock_dir: Path
    podman: Podman = field(default_factory=Podman)
    proc: subprocess.Popen | None = None
    log_dir: Path | None = None

    @property
    def socket(self) -> Path:
        return Path(self.sock_dir).resolve() / "podman.sock"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log(self) -> Path:
        return Path(self.log_dir or self.sock_dir) / "podman-service.log"

    def start(self, timeout: float = 30.0) -> str:
        """Start the service, wait until it answers /_ping; returns DOCKER_HOST."""
        if len(str(self.socket)) > 100:
            raise ImageError(f"{self.socket}: too long for a unix socket path")
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        log = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.podman.argv("system", "service", "--time=0", self.docker_host),
            env=self.podman.env(), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not engine_answers(self.docker_host):
            if self.proc.poll() is not None:
                raise ImageError(f"podman system service exited ({self.proc.returncode}); "
                                 f"see {self.log}")
            if time.monotonic() > deadline:
                self.stop()
                raise ImageError(f"podman system service: no answer on {self.socket}")
            time.sleep(0.2)
        return self.docker_host

    def stop(self) -> None:
        stop_popen([self.proc], timeout=10)
        self.proc = None
        self.socket.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the socket's own folder, if now empty
            self.socket.parent.rmdir()

    def __enter__(self) -> PodmanService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def engine_answers(docker_host: str | None = None, timeout: float = 5.0) -> bool:
    """True when a Docker API answers at docker_host (default: $DOCKER_HOST or the default
    socket), i.e. what `docker info` needs. Uses the docker SDK (a project dependency)."""
    try:
        import docker.errors
        import requests.exceptions

        import docker
    except ImportError:
        return False
    try:
        client = (docker.DockerClient(base_url=docker_host, timeout=timeout) if docker_host
                  else docker.from_env(timeout=timeout))
        with contextlib.closing(client):
            return bool(client.ping())
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError,
            urllib.error.URLError):
        return False


# -- building ----------------------------------------------------------------------------


def stage_context(dest: Path) -> Path:
    """A build context with only what the project image needs."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in CONTEXT_FILES:
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "tests")
    for pkg in CONTEXT_PACKAGES:
        shutil.copytree(REPO / pkg, dest / pkg, ignore=ignore)
    shutil.copytree(DOCKER_DIR, dest / "docker")
    return dest


def debootstrap_base(podman: Podman, name: str = OFFLINE_BASE) -> float:
    """Debian bookworm minbase with DEBIAN_PACKAGES, imported as `name`. Returns seconds."""
    exe = shutil.which("debootstrap")
    if exe is None:
        raise ImageError("debootstrap is not installed (apt-get install -y debootstrap)")
    t = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ecl-rootfs-") as tmp:
        root = Path(tmp) / "root"
        p = subprocess.run([exe, "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
                            "bookworm", str(root), DEBIAN_MIRROR],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise ImageError(f"debootstrap failed ({p.returncode}):\n{p.stdout[-2000:]}"
                             f"\n{p.stderr[-2000:]}")
        shutil.rmtree(root / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        podman.run("import", "--change", 'CMD ["/bin/bash"]', "-", name, stdin=tar.stdout)
        tar.stdout.close()
        if tar.wait() != 0:
            raise ImageError(f"tar of {root} failed")
    return time.monotonic() - t


def host_pip_settings() -> tuple[list[str], dict[str, str]]:
    """podman build volumes + build args that hand the host's pip CA bundle and wheelhouse
    (PIP_CERT / PIP_FIND_LINKS, e.g. behind a TLS-inspecting proxy) to the image build."""
    volumes: list[str] = []
    args: dict[str, str] = {}
    cert = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    if cert and Path(cert).is_file():
        volumes += ["--volume", f"{Path(cert).resolve()}:/run/host-ca.crt:ro"]
        args["PIP_CERT"] = "/run/host-ca.crt"
    links = os.environ.get("PIP_FIND_LINKS")
    if links and Path(links).is_dir() and any(Path(links).iterdir()):
        volumes += ["--volume", f"{Path(links).resolve()}:/run/host-wheels:ro"]
        args["PIP_FIND_LINKS"] = "/run/host-wheels"
    return volumes, args


def build(podman: Podman, dockerfile: str, tag: str, context: Path,
          args: dict[str, str], target: str | None = None) -> float:
    t = time.monotonic()
    volumes, pip_args = host_pip_settings()
    args = {**pip_args, **args}
    argv = ["build", "--network", "host", *volumes,
            "-f", str(context / "docker" / dockerfile), "-t", tag,
            *(["--target", target] if target else [])]
    for k, v in args.items():
        argv += ["--build-arg", f"{k}={v}"]
    podman.run(*argv, str(context))
    return time.monotonic() - t


def build_offline(force: bool = False, podman: Podman | None = None,
                  geth: Path | None = None) -> dict[str, float]:
    """Build every image the compose runtime needs, without a registry. Reuses present
    images unless force. Returns seconds per step (0.0 = reused)."""
    podman = podman or Podman()
    geth = geth or REPO / "tools" / "bin" / "geth"
    times: dict[str, float] = {}
    if force or not podman.has_image(OFFLINE_BASE):
        times["debian_base"] = debootstrap_base(podman)
    else:
        times["debian_base"] = 0.0
    with tempfile.TemporaryDirectory(prefix="ecl-context-") as tmp:
        ctx = stage_context(Path(tmp) / "ctx")
        steps = [
            (OFFLINE_GETH, "geth-local.Dockerfile", None, {"BASE_IMAGE": OFFLINE_BASE}),
            (GETH_NODE_IMAGE, "geth.Dockerfile", None, {"GETH_IMAGE": OFFLINE_GETH}),
            (PROJECT_IMAGE, "Dockerfile", "project",
             {"BASE_IMAGE": OFFLINE_BASE, "GETH_IMAGE": OFFLINE_GETH}),
            (DEVICE_IMAGE, "Dockerfile", "device",
             {"BASE_IMAGE": OFFLINE_BASE, "GETH_IMAGE": OFFLINE_GETH}),
        ]
        if not geth.is_file():
            raise ImageError(f"{geth}: no geth binary; run `make setup` first")
        (ctx / "geth").mkdir()
        shutil.copy2(geth, ctx / "geth" / "geth")
        for tag, dockerfile, target, args in steps:
            # project and device images follow the sources: rebuilt through the layer
            # cache (seconds when only the lab's code changed); bases are reused as they are
            if force or tag in (PROJECT_IMAGE, DEVICE_IMAGE) or not podman.has_image(tag):
                times[tag] = build(podman, dockerfile, tag, ctx, args, target)
            else:
                times[tag] = 0.0
    return times


def missing_images(docker_host: str | None) -> list[str]:
    """The compose runtime's images the engine at docker_host does not have."""
    import docker.errors

    import docker

    client = docker.DockerClient(base_url=docker_host) if docker_host else docker.from_env()
    with contextlib.closing(client):
        missing = []
        for name in compose_images().values():
            try:
                client.images.get(name)
            except docker.errors.ImageNotFound:
                missing.append(name)
        return missing


def ensure_images(docker_host: str | None, podman_engine: bool, say=print) -> dict:
    """Build the compose runtime's images when the engine lacks any, showing progress: a
    Docker engine builds the top-level docker-compose.yml (upstream bases from a registry);
    the lab's own podman store (machines without a registry) builds them from Debian
    packages. Returns {"built": [...], "seconds": s}."""
    missing = missing_images(docker_host)
    if not missing:
        return {"built": [], "seconds": 0.0}
    t = time.monotonic()
    say(f"compose: images {', '.join(missing)} missing; building them (once) ...")
    if podman_engine:
        for step, secs in build_offline(podman=Podman()).items():
            say(f"compose:   {step}: {secs:.1f} s")
    else:
        from lab.compose import compose_cli

        cli = compose_cli()
        if cli is None:
            raise ImageError("no compose CLI to build the images with; install Docker "
                             "Compose, or use RUNTIME=local")
        env = dict(os.environ, **({"DOCKER_HOST": docker_host} if docker_host else {}))
        # the build's own progress goes to the terminal
        if subprocess.run([*cli, "-f", str(REPO / "docker-compose.yml"), "build"],
                          env=env, cwd=REPO).returncode != 0:
            raise ImageError("`docker compose build` of docker-compose.yml failed (see its "
                             "output above); RUNTIME=local runs without images")
    still = missing_images(docker_host)
    if still:
        raise ImageError(f"images still missing after the build: {', '.join(still)}")
    return {"built": missing, "seconds": time.monotonic() - t}


def compose_images() -> dict[str, str]:
    """Image names the generated compose file uses (built by build_offline() here, or by
    `docker compose build` of the top-level docker-compose.yml elsewhere)."""
    return {"geth": GETH_NODE_IMAGE, "device": DEVICE_IMAGE}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.images", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build-offline", help="build all images from Debian packages (podman)")
    b.add_argument("--force", action="store_true", help="rebuild images already present")
    sub.add_parser("list", help="the lab's images in the podman store")
    args = ap.parse_args(argv)
    podman = Podman()
    if args.cmd == "build-offline":
        t = time.monotonic()
        times = build_offline(force=args.force, podman=podman)
        times["total"] = time.monotonic() - t
        print(json.dumps({k: round(v, 1) for k, v in times.items()}))
    else:
        print(podman.run("images").stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
