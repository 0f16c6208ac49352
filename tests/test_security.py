"""Open doors, closed: the local Ray pool listens on loopback only and asks for a token, a crafted CIFAR file
cannot run code, and the dashboard asks for credentials and refuses writes unless told otherwise."""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_search import ROOT, _wait_for_running

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------- processes and their listening sockets

def _listening_by_inode() -> dict[str, tuple[str, int]]:
    """Every listening TCP socket of this network namespace: inode -> (address, port)."""
    found = {}
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] != "0A":  # TCP_LISTEN
                continue
            addr, port = f[1].split(":")
            raw = bytes.fromhex(addr)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # host-order 32-bit words
            found[f[9]] = (socket.inet_ntop(family, raw), int(port, 16))
    return found


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _listening(pids: list[int]) -> list[tuple[int, str, str, int]]:
    """(pid, process name, address, port) of every listening TCP socket the processes hold."""
    sockets = _listening_by_inode()
    rows = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            inode = target[len("socket:["):-1] if target.startswith("socket:[") else None
            if inode in sockets:
                rows.add((pid, name, *sockets[inode]))
    return sorted(rows)


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


_GCS_CLIENT = """
import sys
from ray._raylet import GcsClient
try:
    GcsClient(address=sys.argv[1]).internal_kv_keys(b"", None, timeout=10)
except Exception as e:
    print(type(e).__name__)
    sys.exit(1)
print("served")
"""


def _gcs_client(address: str, **ray_env: str) -> str:
    """What a bare GCS client with these RAY_* variables gets: 'served' or the error's type."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | ray_env
    r = subprocess.run([sys.executable, "-c", _GCS_CLIENT, address], env=env, capture_output=True, text=True,
                       timeout=60)
    return (r.stdout.strip().splitlines() or [r.stderr[-300:]])[-1]


# ---------------------------------------------------------------- 1. the local Ray pool


def test_local_pool_listens_on_loopback_only_and_requires_its_token(tmp_path, campaign_file):
    """`dal-search pool` without --address, under RAY_AUTH_MODE=disabled as the test suite sets it: every
    listening socket of the driver and all its descendants (GCS, raylet, agents, actors) is on loopback, and
    the GCS serves a client holding the pool's fresh token and refuses one without it."""
    url = f"sqlite:///{tmp_path}/sec.db"
    path = campaign_file(name="secpool", trials=2, epochs=400)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="disabled", DAL_SEARCH_HEARTBEAT="1", DAL_SEARCH_GRACE="4")
    driver = subprocess.Popen([sys.executable, "-m", "dal_search", "pool", path, "--storage", url, "--workers", "1",
                               "--quiet"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        _wait_for_running(url, "secpool")  # the actor is up and training: every kind of Ray process exists
        pids = _descendants(driver.pid)
        sockets = _listening(pids)
        names = {name for _, name, _, _ in sockets}
        assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::") for n in names), sockets
        exposed = [s for s in sockets if not _is_loopback(s[2])]
        assert not exposed, f"listening beyond loopback: {exposed}"

        gcs_pid = next(pid for pid, name, _, _ in sockets if name == "gcs_server")
        gcs_ports = {port for pid, _, _, port in sockets if pid == gcs_pid}
        assert len(gcs_ports) == 1, sockets
        gcs = f"127.0.0.1:{gcs_ports.pop()}"
        token = _environ(gcs_pid).get("RAY_AUTH_TOKEN", "")
        assert re.fullmatch(r"[0-9a-f]{64}", token), "the pool's cluster got no fresh 256-bit token"
        assert _environ(gcs_pid).get("RAY_AUTH_MODE") == "token"
        assert _gcs_client(gcs, RAY_AUTH_MODE="disabled") == "AuthenticationError"
        assert _gcs_client(gcs, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token) == "served"  # the refusal is the token

        driver.send_signal(signal.SIGINT)  # Ctrl-C: the trial is re-queued and Ray shut down
        assert driver.wait(timeout=120) == 130, driver.stderr.read()[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()


# ---------------------------------------------------------------- 2. a data folder cannot run code


class _Touch:
    """Unpickling this runs `touch PATH` (what a crafted CIFAR file would do with a worse command)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def _craft_cifar(root: Path, crafted: str, marker: Path) -> None:
    """A CIFAR-10 folder whose file `crafted` holds a live payload that would create `marker`."""
    import pickle

    from tests.test_data import _write_cifar

    folder, written = _write_cifar(root)
    entry = dict(written[crafted], data=_Touch(marker)) if crafted in written else {"label_names": _Touch(marker)}
    with open(folder / crafted, "wb") as fh:
        pickle.dump(entry, fh, protocol=2)
    proof = root / "proof"
    pickle.loads(pickle.dumps(_Touch(proof), protocol=2))  # the payload is live: plain pickle runs it
    assert proof.exists()
    proof.unlink()


def test_a_crafted_cifar_batch_runs_nothing(tmp_path, capfd):
    """`dal-search train --dataset cifar10 --data-dir EVIL` (its main(), in this process: a payload that ran
    would run here) exits 2 with one line on stderr, and the payload's marker is never made."""
    from dal_search.objectives.data import clear_cache
    from dal_search.search.cli import main

    marker = tmp_path / "marker"
    _craft_cifar(tmp_path / "EVIL", "data_batch_1", marker)
    clear_cache()
    rc = main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "EVIL"), "--epochs", "1", "--quiet"])
    err = capfd.readouterr().err
    assert not marker.exists(), "loading the dataset ran the file's code"
    assert rc == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "data_batch_1: asks to run posix.system" in lines[0] and "corrupt" in lines[0], lines[0]


def test_a_crafted_cifar_meta_file_runs_nothing(tmp_path):
    from dal_search.objectives.data import DataError, clear_cache, load_dataset

    marker = tmp_path / "marker"
    _craft_cifar(tmp_path / "EVIL", "batches.meta", marker)
    clear_cache()
    with pytest.raises(DataError) as refused:
        load_dataset("cifar10", root=tmp_path / "EVIL")
    assert not marker.exists(), "loading the dataset ran the file's code"
    assert "corrupt (UnpicklingError: batches.meta: asks to run posix.system" in str(refused.value)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5, "numpy1"])
def test_re_packed_cifar_loads_under_the_restricted_unpickler(tmp_path, protocol):
    """Copies re-pickled by python 3 at any protocol, and pickles naming numpy 1's modules (as the official
    python 2 files do), load with their arrays, labels and class names intact."""
    import pickle

    import numpy as np

    from dal_search.objectives.data import clear_cache, load_dataset
    from tests.test_data import _write_cifar

    folder, written = _write_cifar(tmp_path)
    for name in list(written) + ["batches.meta"]:
        obj = pickle.loads((folder / name).read_bytes())
        if name in written:
            obj["data"] = obj["data"].reshape(-1, 3072)  # a fresh array, pickled again below
            obj["batch_label"] = name.encode()  # bytes: `_codecs.encode` at protocols 0-2
            obj["num"] = np.int64(len(obj["labels"]))  # a numpy scalar
        blob = pickle.dumps(obj, protocol=2 if protocol == "numpy1" else protocol)
        if protocol == "numpy1":
            blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            assert b"numpy.core.multiarray" in blob or name == "batches.meta"
        (folder / name).write_bytes(blob)
    clear_cache()
    d = load_dataset("cifar10", root=tmp_path)
    assert d.classes == [f"c{i}" for i in range(10)]
    assert d.train_y.tolist() == [y for i in range(1, 6) for y in written[f"data_batch_{i}"]["labels"]]
    first = written["data_batch_1"]["data"][0].reshape(3, 32, 32).astype(np.float32) / 255.0
    mean, std = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])
    expected = (first - mean[:, None, None]) / std[:, None, None]
    assert np.allclose(d.train_x[0].numpy(), expected, atol=1e-5)
    clear_cache()


# ---------------------------------------------------------------- 3. the dashboard


@pytest.fixture
def study_url(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path}/dash.db"
    study = optuna.create_study(study_name="kept", storage=url)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    return url


@pytest.fixture
def serve(study_url):
    """Start the gated dashboard in this process on a free port: serve(token, allow_writes) -> base URL."""
    import threading

    from dal_search.search.dashboard import make_dashboard_server

    servers = []

    def start(token: str, allow_writes: bool = False) -> str:
        server = make_dashboard_server(study_url, "127.0.0.1", 0, token, allow_writes=allow_writes)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _http(method: str, url: str, headers: dict | None = None):
    """(status, headers, body) without following redirects."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def _study_names(url: str) -> list[str]:
    import optuna

    return optuna.get_all_study_names(url)


def test_dashboard_answers_only_its_token(serve):
    import base64

    token = "t0k3n-" + "a" * 40
    base = serve(token)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {token}x"},
                    {"Authorization": "Basic " + base64.b64encode(b"anyone:wrong").decode()},
                    {"Authorization": "Basic !!!"}, {"Cookie": "dal_search_dashboard=" + token}):
        status, head, body = _http("GET", f"{base}/api/studies", headers)
        assert status == 401, headers
        assert head["WWW-Authenticate"] == 'Basic realm="dal-search"'
        assert b"kept" not in body
    bearer = {"Authorization": f"Bearer {token}"}
    basic = {"Authorization": "Basic " + base64.b64encode(f"whoever:{token}".encode()).decode()}
    for headers in (bearer, basic):
        status, _, body = _http("GET", f"{base}/api/studies", headers)
        assert status == 200 and b"kept" in body

    # /?token= once: a cookie, and the same page without the token (other parameters kept)
    status, head, _ = _http("GET", f"{base}/dashboard/studies/1?a=1&token={token}&b=2")
    assert status == 303 and head["Location"] == "/dashboard/studies/1?a=1&b=2"
    cookie = head["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and token not in cookie
    jar = {"Cookie": cookie.split(";")[0]}
    status, _, body = _http("GET", f"{base}/api/studies", jar)
    assert status == 200 and b"kept" in body
    assert _http("GET", f"{base}/?token=wrong")[0] == 401
    assert _http("GET", f"{base}//evil.example/?token={token}")[1]["Location"] == "/evil.example/"

    # read-only: every method but GET and HEAD is refused, whoever asks
    assert _http("HEAD", f"{base}/api/studies", bearer)[0] == 200
    for method, path in (("DELETE", "/api/studies/1"), ("POST", "/api/studies"), ("PUT", "/api/studies/1/note"),
                         ("POST", "/api/studies/1/rename"), ("PATCH", "/api/studies/1")):
        for headers in (bearer, basic, jar):
            assert _http(method, base + path, headers)[0] == 403, (method, path)
        assert _http(method, base + path)[0] == 401


def test_dashboard_keeps_the_study_unless_writes_are_allowed(serve, study_url):
    token = "b" * 48
    read_only = serve(token)
    assert _http("DELETE", f"{read_only}/api/studies/1", {"Authorization": f"Bearer {token}"})[0] == 403
    assert _study_names(study_url) == ["kept"]
    writable = serve(token, allow_writes=True)
    assert _http("DELETE", f"{writable}/api/studies/1")[0] == 401
    assert _http("DELETE", f"{writable}/api/studies/1", {"Authorization": f"Bearer {token}"})[0] == 204
    assert _study_names(study_url) == []


def test_dashboard_cli_makes_a_token_and_prints_its_url_once(study_url):
    """No --token and no $DAL_SEARCH_DASHBOARD_TOKEN: a fresh token, in the one start-up line's URL."""
    import socket as _socket

    with _socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "DAL_SEARCH_DASHBOARD_TOKEN"}
    proc = subprocess.Popen([sys.executable, "-m", "dal_search", "dashboard", "--storage", study_url, "--port",
                             str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        match = re.search(rf"http://127\.0\.0\.1:{port}/\?token=([0-9a-f]{{64}}) \(read-only", line)
        assert match, line
        status, _, body = _http("GET", f"http://127.0.0.1:{port}/api/studies",
                                {"Authorization": f"Bearer {match.group(1)}"})
        assert status == 200 and b"kept" in body
        assert _http("GET", f"http://127.0.0.1:{port}/api/studies")[0] == 401
    finally:
        proc.terminate()
        _, rest = proc.communicate(timeout=20)
    assert match.group(1) not in rest  # the request lines (with ?token=) are not logged


@pytest.mark.parametrize("port", ["0", "99999", "-1"])
def test_dashboard_port_outside_the_tcp_range_is_one_line(port, study_url):
    import contextlib
    import io

    from dal_search.search.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["dashboard", "--storage", study_url, "--port", port])
    assert rc == 2
    assert err.getvalue().count("\n") == 1 and "--port" in err.getvalue() and "65535" in err.getvalue()
