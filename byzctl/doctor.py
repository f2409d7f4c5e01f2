"""`byzctl doctor [--json]`: is this machine ready to run byzctl?

Each check reports ok, warn or fail with a one-line detail. Exit code 0 when no check
failed, 1 otherwise (warnings do not fail: e.g. no GPU, or no CURVE for secured clusters).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

Status = Literal["ok", "warn", "fail"]

MIN_PYTHON = (3, 10)


@dataclass
class Check:
    name: str
    status: Status
    detail: str


def check_python() -> tuple[Status, str]:
    v = sys.version_info
    text = f"{v.major}.{v.minor}.{v.micro} ({sys.executable})"
    if (v.major, v.minor) < MIN_PYTHON:
        return "fail", f"{text}; byzctl needs >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]}"
    return "ok", text


def check_torch() -> tuple[Status, str]:
    import torch

    return "ok", f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads"


def check_cuda() -> tuple[Status, str]:
    import torch

    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return "ok", f"CUDA {torch.version.cuda}: {len(names)} device(s): {', '.join(names)}"
    if torch.version.cuda:
        return "warn", f"torch is built for CUDA {torch.version.cuda} but no GPU is usable; runs use the CPU (device=auto)"
    return "ok", "CPU-only build of torch; runs use the CPU"


def check_zmq() -> tuple[Status, str]:
    import zmq

    return "ok", f"pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}"


def check_curve() -> tuple[Status, str]:
    import zmq

    if zmq.has("curve"):
        return "ok", "libzmq has CURVE: secured clusters (byzctl keys gen) work"
    return "warn", "libzmq lacks CURVE: only plain TCP/ipc; install a pyzmq wheel built with libsodium for secured clusters"


def check_bundled_data() -> tuple[Status, str]:
    from byzctl.data.mnist_subset import load_mnist_5k

    t0 = time.perf_counter()
    x, y = load_mnist_5k()
    dt = time.perf_counter() - t0
    return "ok", f"mnist_subset: x {tuple(x.shape)}, y {tuple(y.shape)}, {len(set(y.tolist()))} classes, loaded in {dt:.2f}s"


def _roundtrip(endpoint: str) -> str:
    """Bind a ROUTER at `endpoint`, send one message from a DEALER, return the bound address."""
    import zmq

    ctx: zmq.Context = zmq.Context.instance()  # type: ignore[type-arg]
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        for s in (router, dealer):
            s.setsockopt(zmq.LINGER, 0)
        router.bind(endpoint)
        bound = router.getsockopt(zmq.LAST_ENDPOINT).decode()
        dealer.connect(bound)
        dealer.send(b"doctor")
        if not router.poll(3000):
            raise TimeoutError(f"no message arrived over {bound} within 3s")
        _, payload = router.recv_multipart()
        if payload != b"doctor":
            raise ValueError(f"{bound} delivered {payload!r}")
        return bound
    finally:
        dealer.close()
        router.close()


def check_tcp() -> tuple[Status, str]:
    bound = _roundtrip("tcp://127.0.0.1:*")
    return "ok", f"bound {bound} and exchanged a message"


def check_ipc() -> tuple[Status, str]:
    with tempfile.TemporaryDirectory(prefix="byzctl-") as tmp:
        path = Path(tmp) / "doctor.sock"
        if len(str(path)) > 100:
            return "warn", f"temp dir path {tmp} is long; ipc socket paths are limited to ~107 bytes (set TMPDIR shorter)"
        bound = _roundtrip(f"ipc://{path}")
    return "ok", f"bound {bound} and exchanged a message"


def check_outputs() -> tuple[Status, str]:
    out = Path("outputs")
    target = out if out.exists() else Path.cwd()
    if out.exists() and not out.is_dir():
        return "fail", f"{out.resolve()} exists and is not a directory"
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".byzctl-doctor-"):
            pass
    except OSError as exc:
        return "fail", f"cannot write in {target.resolve()}: {exc.strerror}; byzctl run writes its runs under ./outputs"
    where = out.resolve() if out.exists() else f"{out.resolve()} (will be created)"
    return "ok", f"{where} is writable"


def _versions(names: tuple[str, ...]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def check_hydra() -> tuple[Status, str]:
    v = _versions(("hydra-core", "omegaconf"))
    missing = [k for k, x in v.items() if x is None]
    if missing:
        return "fail", f"not installed: {', '.join(missing)}"
    return "ok", ", ".join(f"{k} {x}" for k, x in v.items())


def check_plotting_and_vision() -> tuple[Status, str]:
    v = _versions(("matplotlib", "torchvision"))
    missing = [k for k, x in v.items() if x is None]
    text = ", ".join(f"{k} {x}" for k, x in v.items() if x)
    if missing:
        return "warn", f"{text}; missing {', '.join(missing)} (byzctl report needs matplotlib; mnist/cifar10 need torchvision)"
    return "ok", text


def check_loggers() -> tuple[Status, str]:
    """Which `logger=` options this machine can run (their packages are optional)."""
    from byzctl.config.schema import options
    from byzctl.errors import ConfigError

    ready, missing = [], []
    for name, cls in options("logger").items():
        if name == "none":
            continue
        logger = cls()
        try:
            logger.check()
        except ConfigError:
            need = [pkg for module, pkg in logger.requirements() if importlib.util.find_spec(module) is None]
            missing.append(f"logger={name} needs: pip install {' '.join(need)}")
            continue
        # mlflow-skinny or the full mlflow: whichever distribution provides the module
        v = {pkg: _versions((pkg,))[pkg] or _versions((module,))[module] for module, pkg in logger.requirements()}
        ready.append(f"logger={name} ({', '.join(f'{k} {x}' for k, x in v.items() if x)})")
    text = "; ".join(ready + missing) or "no logger options"
    return "ok", f"{text} (optional; metrics.jsonl is always written)"


def check_kernels() -> tuple[Status, str]:
    """The compiled kernels of the coordinate-wise rules, each run once here against the
    torch network they replace: numba on the CPU, Triton's self-check on a GPU."""
    import torch

    from byzctl.aggregators import _numba_select, _triton_select
    from byzctl.aggregators.meamed import around_median

    status: Status = "ok"
    x = torch.randn(9, _numba_select.MIN_COLUMNS, generator=torch.Generator().manual_seed(0))  # (9, d)
    if not _numba_select.switch.available():
        status, parts = "warn", [f"numba kernel unavailable ({_numba_select.switch.broken or 'numba does not import'}): "
                                 "CPU coordinate-wise rules use the torch network, 2-3x slower"]
    else:
        t0 = time.perf_counter()
        got = _numba_select.columns(x, rule="meamed", f=2)  # compiles, or loads numba's disk cache
        seconds = time.perf_counter() - t0
        if not torch.allclose(got, around_median(x, keep=7), rtol=1e-5, atol=1e-6):
            return "fail", "numba kernel disagrees with the torch network on meamed"
        parts = [f"numba kernel ok (first call {seconds:.1f}s)"]
    if torch.cuda.is_available():
        if not _triton_select.switch.available():
            status = "warn"
            parts.append("Triton unavailable: CUDA coordinate-wise rules use torch.sort")
        else:
            try:
                _triton_select.self_check(torch.device("cuda"))
                parts.append("Triton kernel passed its self-check on cuda")
            except Exception as e:  # a compile error or a wrong kernel: the rules would fall back
                status = "warn"
                parts.append(f"Triton kernel failed ({type(e).__name__}: {str(e)[:200]}): CUDA rules use torch.sort")
    return status, "; ".join(parts)


CHECKS: list[tuple[str, Callable[[], tuple[Status, str]]]] = [
    ("python", check_python),
    ("torch", check_torch),
    ("cuda", check_cuda),
    ("zeromq", check_zmq),
    ("curve", check_curve),
    ("bundled data", check_bundled_data),
    ("tcp loopback", check_tcp),
    ("ipc socket", check_ipc),
    ("outputs", check_outputs),
    ("hydra", check_hydra),
    ("report/vision", check_plotting_and_vision),
    ("loggers", check_loggers),
    ("kernels", check_kernels),
]


def run_checks() -> list[Check]:
    """Every check; one that raises fails with the exception as its detail."""
    out = []
    for name, fn in CHECKS:
        try:
            status, detail = fn()
        except Exception as exc:  # a check must never crash the doctor
            status, detail = "fail", f"{type(exc).__name__}: {exc}"
        out.append(Check(name, status, detail))
    return out


STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="byzctl doctor", description="Check torch/CUDA, ZeroMQ/CURVE, bundled data, sockets and outputs/.")
    p.add_argument("--json", action="store_true", help="print a JSON array of {name, status, detail}")
    args = p.parse_args(argv)
    checks = run_checks()
    failed = any(c.status == "fail" for c in checks)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
        return 1 if failed else 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="byzctl doctor", title_justify="left")
    t.add_column("check", style="bold")
    t.add_column("status")
    t.add_column("detail", overflow="fold")
    for c in checks:
        t.add_row(c.name, f"[{STYLE[c.status]}]{c.status}[/]", c.detail)
    console = Console()
    console.print(t)
    n_warn = sum(c.status == "warn" for c in checks)
    console.print("[bold red]some checks failed[/]" if failed else f"[green]ready[/] ({n_warn} warning{'s' if n_warn != 1 else ''})")
    return 1 if failed else 0
