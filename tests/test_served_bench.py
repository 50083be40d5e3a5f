"""The served benchmark, its load generator and peer, the tuner, and how workers share the cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import requests
import torch
import yaml

import models
from handlers.cores import SLOT, CoreShare
from serving.build.archive import with_config
from serving.perf import bench_serve, loadgen, tune
from serving.run import process
from serving.run.paths import MODEL_STORE
from tests.numerics import assert_same_top_k


# -- cores ----------------------------------------------------------------------------------------

def dead_pid() -> int:
    """A pid no process has: a child that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_busy_worker_takes_all_cores_alone_and_a_share_beside_another(tmp_path):
    share = tmp_path / "cores"
    me = CoreShare(share, max_threads=8, cores=4)
    other = CoreShare(share, max_threads=8, cores=4, pid=os.getppid())  # a live process
    assert me.slot != other.slot
    before = torch.get_num_threads()
    try:
        with me.running():
            assert torch.get_num_threads() == 4 and me.busy_workers() == 1
        SLOT.pack_into(other.map, other.slot * SLOT.size, os.getppid(), 1)  # the other is busy
        with me.running():
            assert torch.get_num_threads() == 2 and me.busy_workers() == 2
        assert me.busy_workers() == 1  # itself idle again, the other still busy
    finally:
        torch.set_num_threads(before)


def test_a_worker_knows_every_thread_count_the_share_may_give_it(tmp_path):
    assert CoreShare(tmp_path / "a", max_threads=2, cores=2).thread_counts(2) == [1, 2]
    assert CoreShare(tmp_path / "b", max_threads=16, cores=16).thread_counts(4) == [4, 5, 8, 16]
    assert CoreShare(tmp_path / "c", max_threads=1, cores=4).thread_counts(2) == [1]
    assert CoreShare(None, max_threads=2, cores=2).thread_counts(2) == [torch.get_num_threads()]


def test_a_worker_that_died_busy_stops_counting_and_its_slot_is_reused(tmp_path):
    share = tmp_path / "cores"
    gone = dead_pid()
    ghost = CoreShare(share, max_threads=2, cores=2, pid=gone)
    SLOT.pack_into(ghost.map, ghost.slot * SLOT.size, gone, 1)  # killed mid-batch
    me = CoreShare(share, max_threads=2, cores=2)
    assert me.slot == ghost.slot  # the dead worker's slot
    assert me.busy_workers() == 0


def test_a_capped_worker_never_takes_more_than_its_setting(tmp_path):
    me = CoreShare(tmp_path / "cores", max_threads=1, cores=4)
    before = torch.get_num_threads()
    try:
        with me.running():
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_share_file_that_cannot_be_made_leaves_a_fixed_split(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    share = CoreShare(blocked / "cores", max_threads=2, cores=2)  # its folder is a file
    assert not share.shared and share.slot == -1
    with share.running():  # runs, with the threads it has
        pass


# -- archive copies and the tuner's config writing --------------------------------------------------

def test_a_tuning_copy_changes_the_serving_config_and_nothing_else(build_info, tmp_path):
    source = MODEL_STORE / "digits.mar"
    copy = with_config(source, tmp_path / "digits.mar",
                       {"batchSize": 3, "minWorkers": 2, "handler": {"torch_threads": 1}})
    with zipfile.ZipFile(source) as a, zipfile.ZipFile(copy) as b:
        assert a.namelist() == b.namelist()
        for name in a.namelist():
            if name != "model-config.yaml":
                assert a.read(name) == b.read(name), name
        before = yaml.safe_load(a.read("model-config.yaml"))
        after = yaml.safe_load(b.read("model-config.yaml"))
    assert after["batchSize"] == 3 and after["minWorkers"] == 2
    assert after["handler"] == {**before["handler"], "torch_threads": 1}
    assert after["maxBatchDelay"] == before["maxBatchDelay"]


def tuning_result(config: dict) -> dict:
    best = {"batchSize": 4, "maxBatchDelay": 1, "workers": 2, "threads": 1, "score": 120.0,
            "best": {"p99_ms": 80.0, "clients": 8}}
    return {"model": "digits", "cpu": "a CPU", "p99_ms": 100.0, "best": best,
            "baseline": {"score": 90.0}, "candidates": [best, {"score": 90.0}]}


def test_the_tuner_writes_its_choice_and_keeps_the_configs_comments(tmp_path):
    config = tmp_path / "model-config.yaml"
    original = (models.MODELS_DIR / "digits" / models.SERVING_CONFIG).read_text()
    config.write_text(original)
    tune.write_config(tuning_result({}), config)
    tune.write_config(tuning_result({}), config)  # a second run replaces, never stacks
    text = config.read_text()
    written = yaml.safe_load(text)
    assert (written["batchSize"], written["maxBatchDelay"]) == (4, 1)
    assert (written["minWorkers"], written["maxWorkers"]) == (2, 2)
    assert written["handler"]["torch_threads"] == 1
    assert written["handler"]["input_shape"] == [8, 8]  # the rest is kept
    assert text.count("# tuned:") == 1 and "120.0 req/s at p99 80 ms" in text
    kept = [line for line in original.splitlines()
            if line.startswith("#") and not line.startswith("# tuned:")]
    assert all(line in text for line in kept)


def candidate(batch: int, points: list[tuple[int, float, float]]) -> dict:
    return {"batchSize": batch, "maxBatchDelay": 1, "workers": 1, "threads": 2, "ready_s": 1.0,
            "points": [{"clients": c, "ok_per_s": rps, "p50_ms": p99 / 2, "p99_ms": p99, "errors": 0}
                       for c, rps, p99 in points]}


def test_bench_serve_config_pairs_become_model_config_settings():
    assert bench_serve.config_settings(["batchSize=32", "maxBatchDelay=5", "deviceType=gpu",
                                        "handler.torch_threads=2"]) == {
        "batchSize": 32, "maxBatchDelay": 5, "deviceType": "gpu", "handler": {"torch_threads": 2}}
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        bench_serve.config_settings(["batchSize"])


def test_a_recorded_search_is_decided_again_for_another_limit_and_within_the_noise():
    current = candidate(4, [(1, 50, 20), (8, 200, 60)])
    bigger = candidate(8, [(1, 40, 30), (8, 240, 90), (16, 300, 150)])
    slightly = candidate(2, [(1, 55, 18), (8, 210, 58)])  # 5% more: within the noise
    recorded = {"model": "m", "cpu": "a CPU", "baseline": dict(current),
                "candidates": [current, bigger, slightly]}
    loose = tune.rescore(recorded, p99_ms=200)
    assert loose["best"]["batchSize"] == 8 and loose["best"]["score"] == 300
    tight = tune.rescore(recorded, p99_ms=70)
    assert tight["best"]["batchSize"] == 4  # bigger answers nothing within 70 ms at more than 240
    assert tight["baseline"]["score"] == 200


def test_a_candidate_that_refuses_at_the_planned_concurrency_is_out():
    points = [{"clients": 8, "ok_per_s": 150, "p99_ms": 80, "errors": 0},
              {"clients": 16, "ok_per_s": 148, "p99_ms": 160, "errors": 69}]
    assert tune.score(points, p99_ms=250, clients=16) == (0.0, None)
    assert tune.score(points, p99_ms=250, clients=8) == (150, points[0])


def test_the_pareto_front_keeps_only_points_nothing_beats():
    points = [{"p99_ms": 10, "ok_per_s": 100}, {"p99_ms": 20, "ok_per_s": 90},
              {"p99_ms": 30, "ok_per_s": 150}, {"p99_ms": 5, "ok_per_s": 50}]
    assert [p["ok_per_s"] for p in tune.pareto(points)] == [50, 100, 150]


def test_rounds_give_torchserves_ratio_to_the_best_peer_of_each_round_and_their_median():
    def closed(ok, p99):
        return {"ok_per_s": ok, "p50_ms": p99 / 2, "p99_ms": p99}

    def server(ok, p99):
        return {"closed": closed(ok, p99), "c1": {"p50_ms": 10.0},
                "open": [{"ok_per_s": ok * 0.9, "p99_ms": p99 * 0.8}]}

    rounds = [{"torchserve": closed(90, 100), "litserve": closed(100, 120), "triton": closed(80, 90)},
              {"torchserve": closed(110, 80), "litserve": closed(100, 90), "triton": closed(50, 95)},
              {"torchserve": closed(95, 100), "litserve": closed(90, 95), "triton": closed(100, 99)}]
    result = {"model": "m", "inprocess": {"handler_req_per_s": 100.0, "forward_c1_ms": 1.0},
              "torchserve": server(90, 100), "litserve": server(100, 120),
              "triton": server(80, 90), "rounds": rounds}
    summary = bench_serve.summarise(result)
    assert summary["torchserve_vs_best_peer_per_round"] == pytest.approx([0.9, 1.1, 0.95])
    assert summary["torchserve_vs_best_peer_median"] == pytest.approx(0.95)
    assert summary["torchserve_p99_lowest_in_rounds"] == 1  # round 2 only
    result["summary"] = summary
    lines = bench_serve.rounds_table([result], ["litserve", "triton"]).splitlines()
    assert len({line.count("|") for line in lines}) == 1  # every row has every column
    assert "0.95x (range 0.90-1.10; TorchServe's p99 the lowest in 1 of 3)" in lines[-1]


def test_waiting_for_a_server_that_exited_fails_at_once_and_quotes_its_log(tmp_path):
    import psutil

    from serving.run.torchserve import free_port

    log = tmp_path / "peer.log"
    with open(log, "wb") as out:
        child = subprocess.Popen([sys.executable, "-c", "print('\\n'.join(map(str, range(40))));"
                                  "raise SystemExit('the reason it gave')"],
                                 stdout=out, stderr=out)
    started = time.monotonic()
    # The log's last lines are in the failure, so that CI's output says why.
    with pytest.raises(process.StartFailed, match=r"(?s)exited before it answered.*peer.log\n"
                       r"    29\n.*    39\n    the reason it gave$"):  # 12 lines
        process.wait_http(f"http://127.0.0.1:{free_port()}/health", timeout=60,
                          server=psutil.Process(child.pid), log=log)
    assert time.monotonic() - started < 10  # not the whole timeout
    child.wait()


def test_a_server_that_does_not_start_counts_failed_and_the_search_goes_on(tmp_path, monkeypatch):
    # `serving` stands in for a server that never starts, after its own tries on new ports (the
    # next test starts real ones): making a real server fail every start is not possible.
    from contextlib import contextmanager

    starts = []

    @contextmanager
    def never_starts(*args, **kwargs):
        starts.append(args[0])
        raise process.StartFailed("the server for http://127.0.0.1:1/ready exited before it "
                                  "answered")
        yield

    monkeypatch.setattr(tune, "serving", never_starts)
    monkeypatch.setattr(tune, "MODEL_STORE", tmp_path)
    with zipfile.ZipFile(tmp_path / "digits.mar", "w") as mar:
        mar.writestr("MAR-INF/MANIFEST.json", "{}")
        mar.writestr("model-config.yaml", "batchSize: 4\n")
    candidate = {"batchSize": 4, "maxBatchDelay": 1, "workers": 2, "threads": 1}
    lines = []
    result = tune.measure_candidate("digits", candidate, 250, 1, tmp_path / "work", lines.append,
                                    server="triton")
    assert starts == ["triton"]
    assert result["score"] == 0.0 and result["best"] is None and "exited" in result["failed"]
    assert "did not start" in tune.table({"p99_ms": 250, "candidates": [result], "best": None})


# -- against real servers --------------------------------------------------------------------------

def example(name: str) -> tuple[Path, str]:
    file, content_type = models.load(name).example_request
    return models.MODELS_DIR / name / file, content_type


def test_the_load_generator_counts_what_the_server_answers(server):
    body, content_type = example("digits")
    url = f"{server.inference_url}/predictions/digits"
    headers = server.auth("inference")
    closed = loadgen.run(url, body.read_bytes(), {"Content-Type": content_type, **headers},
                         seconds=2, clients=2, warmup=0.5)
    assert closed["ok"] > 20 and closed["statuses"] == {"200": closed["ok"]}
    assert 0 < closed["p50_ms"] <= closed["p99_ms"] <= closed["max_ms"]
    opened = loadgen.run(url, body.read_bytes(), {"Content-Type": content_type, **headers},
                         seconds=2, rate=25, warmup=0.5)
    assert 45 <= opened["ok"] <= 55, opened  # 25/s for 2 s, each counted once
    refused = loadgen.run(url, b'{"pixels": [1]}', {"Content-Type": content_type, **headers},
                          seconds=1, clients=1, warmup=0.2)
    assert refused["ok"] == 0 and set(refused["statuses"]) == {"422"}


def test_multipart_bodies_are_read_by_torchserve_as_the_raw_body_is(server):
    body, content_type = example("efficientnet_lite0")
    data, multipart_type = loadgen.multipart(body.read_bytes(), content_type)
    url = f"{server.inference_url}/predictions/efficientnet_lite0"
    raw = requests.post(url, data=body.read_bytes(), timeout=30,
                        headers={"Content-Type": content_type, **server.auth("inference")})
    form = requests.post(url, data=data, timeout=30,
                         headers={"Content-Type": multipart_type, **server.auth("inference")})
    assert raw.status_code == form.status_code == 200
    assert_same_top_k(raw.json()["predictions"], form.json()["predictions"])


@pytest.fixture(scope="module", params=[8, 1], ids=["batched", "unbatched"])
def peer(build_info, request):
    """LitServe batching, and not (batch 1: LitServe then hands predict one request, no list)."""
    pytest.importorskip("litserve", reason="the benchmark's peer: pip install -r "
                        "requirements-bench.txt")
    from serving.perf.peers import litserve_serving

    settings = {"batchSize": request.param, "maxBatchDelay": 20, "workers": 1}
    with litserve_serving("digits", MODEL_STORE, settings) as target:
        yield target.url


def torchserve_answer(server, body: bytes, content_type: str) -> requests.Response:
    return requests.post(f"{server.inference_url}/predictions/digits", data=body, timeout=30,
                         headers={"Content-Type": content_type, **server.auth("inference")})


def test_the_peer_serves_the_same_archive_with_the_same_answers(server, peer):
    body, content_type = example("digits")
    mine = torchserve_answer(server, body.read_bytes(), content_type)
    theirs = requests.post(peer, data=body.read_bytes(), headers={"Content-Type": content_type},
                           timeout=30)
    assert mine.status_code == theirs.status_code == 200
    # Its own process and thread count: the same answer up to float rounding (tests/numerics.py).
    assert_same_top_k(mine.json()["predictions"], theirs.json()["predictions"])
    bad = requests.post(peer, json={"pixels": [[99] * 8] * 8}, timeout=30)
    assert bad.status_code == 422 and bad.json()["detail"]["error"] == "out_of_range"


@pytest.fixture(scope="module")
def triton_peer(build_info, tmp_path_factory):
    from serving.perf.peers import PYTRITON, triton_serving

    if not PYTRITON.exists():
        pytest.skip(f"no {PYTRITON}: make test builds it (requirements-pytriton.txt)")
    body, content_type = example("digits")
    settings = {"batchSize": 8, "maxBatchDelay": 1, "workers": 1, "threads": 1}
    with triton_serving("digits", MODEL_STORE, settings, content_type, body,
                        tmp_path_factory.mktemp("triton")) as (target, _):
        yield target.url


def test_triton_serves_the_same_archive_with_the_same_answers(server, triton_peer):
    from serving.perf.triton_peer import OUTPUT, request_body

    body, content_type = example("digits")
    mine = torchserve_answer(server, body.read_bytes(), content_type)
    request, headers = request_body(body.read_bytes())
    theirs = requests.post(triton_peer, data=request, timeout=30,
                           headers={"Content-Type": "application/octet-stream", **headers})
    assert mine.status_code == theirs.status_code == 200, theirs.text[:500]
    [output] = theirs.json()["outputs"]
    assert output["name"] == OUTPUT and output["datatype"] == "BYTES"
    assert_same_top_k(mine.json()["predictions"], json.loads(output["data"][0])["predictions"])
    # A request the handler refuses fails in Triton with the handler's reason in its error.
    request, headers = request_body(json.dumps({"pixels": [[99] * 8] * 8}).encode())
    bad = requests.post(triton_peer, data=request, timeout=30,
                        headers={"Content-Type": "application/octet-stream", **headers})
    assert bad.status_code >= 400 and "out_of_range" in bad.text


@pytest.mark.parametrize("peer_name", ["litserve", "triton"])
def test_a_peer_whose_port_was_taken_before_it_bound_it_starts_again_on_new_ports(
        build_info, tmp_path, monkeypatch, capsys, peer_name):
    import socket

    from serving.perf import peers
    from serving.run.paths import RUN_DIR
    from serving.run.torchserve import free_port

    if peer_name == "litserve":
        pytest.importorskip("litserve", reason="pip install -r requirements-bench.txt")
    elif not peers.PYTRITON.exists():
        pytest.skip(f"no {peers.PYTRITON}: make test builds it (requirements-pytriton.txt)")
    # The race for real: the first port picked is bound by another socket before the server
    # binds it, as a client socket of another process may take a port once it has been picked.
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    picks = iter([taken.getsockname()[1]])
    monkeypatch.setattr(peers, "free_port", lambda: next(picks, None) or free_port())
    body, content_type = example("digits")
    settings = {"batchSize": 4, "maxBatchDelay": 1, "workers": 1, "threads": 1}
    started = time.monotonic()
    try:
        if peer_name == "litserve":
            serving = peers.litserve_serving("digits", MODEL_STORE, settings)
        else:
            serving = peers.triton_serving("digits", MODEL_STORE, settings, content_type, body,
                                           tmp_path)
        with serving as started_peer:
            if peer_name == "triton":  # the target, and the body in a v2 request
                (target, request), sent_as = started_peer, "application/octet-stream"
            else:
                target, request, sent_as = started_peer, body, content_type
            ready_s = time.monotonic() - started
            answer = requests.post(target.url, data=request.read_bytes(), timeout=30,
                                   headers={"Content-Type": sent_as, **target.headers})
            assert answer.status_code == 200, answer.text[:300]
            assert str(taken.getsockname()[1]) not in target.url
    finally:
        taken.close()
    first_try = (RUN_DIR / "bench-serve" / f"{peer_name}-digits.try1.log").read_text()
    assert "in use" in first_try.lower(), first_try[-2000:]
    assert "did not start (try 1 of 3); again on new ports" in capsys.readouterr().out
    # Not PyTriton's two minutes' wait for a tritonserver that had exited.
    assert ready_s < 100, ready_s


def test_the_served_benchmark_measures_every_part_and_draws_its_curves(build_info, tmp_path, capsys):
    pytest.importorskip("litserve", reason="pip install -r requirements-bench.txt")
    code = bench_serve.main(["digits", "--seconds", "1", "--clients", "4", "--sweep", "0.5", "1.0",
                             "--rounds", "2", "--warmup", "1", "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "served.json").read_text())
    [digits] = result["results"]
    assert digits["inprocess"]["handler_req_per_s"] > 0 and digits["inprocess"]["forward_c1_ms"] > 0
    for server_name in ("torchserve", "litserve", "triton"):
        measured = digits[server_name]
        assert measured["c1"]["ok"] > 0 and measured["closed"]["ok"] > 0
        assert measured["warmup"]["ok_per_s"] > 0  # each server warmed before it is measured
        assert [p["fraction"] for p in measured["open"]] == [0.5, 1.0]
        assert all(p["statuses"].get("200") == p["ok"] for p in measured["open"])
    assert digits["summary"]["served_vs_handler"] > 0
    assert digits["summary"]["best_peer"] in ("litserve", "triton")
    # The second round measured every server's closed loop again, after the first in full.
    assert [sorted(r) for r in digits["rounds"]] == [["litserve", "torchserve", "triton"]] * 2
    assert all(r[s]["ok_per_s"] > 0 for r in digits["rounds"] for s in r)
    assert len(digits["summary"]["torchserve_vs_best_peer_per_round"]) == 2
    assert digits["triton"]["settings"]["batchSize"] == digits["inprocess"]["batch"]
    assert (tmp_path / "served.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "CPU: " in out and "| digits |" in out and "| digits | triton |" in out
    assert "| digits | median |" in out


def test_the_tuner_measures_a_configuration_against_the_real_server(build_info, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setattr(tune, "RUN_DIR", tmp_path)
    monkeypatch.setattr(tune, "LADDER", (1, 2))
    result = tune.search("digits", p99_ms=1000, budget_s=0, seconds=1, log=print)
    [only] = result["candidates"]  # no time for more than the current settings
    assert not result["complete"] and result["best"] is only
    assert len(only["points"]) == 2 and only["score"] > 0
    assert only["score"] == max(p["ok_per_s"] for p in only["points"])
    assert (tune.plot(result, tmp_path / "pareto.png")).stat().st_size > 10_000


def test_each_peer_is_tuned_on_its_own_and_benchmarked_at_its_best(build_info, tmp_path,
                                                                   monkeypatch, capsys):
    pytest.importorskip("litserve", reason="pip install -r requirements-bench.txt")
    if not bench_serve.PYTRITON.exists():
        pytest.skip(f"no {bench_serve.PYTRITON}: make test builds it (requirements-pytriton.txt)")
    monkeypatch.setattr(tune, "RUN_DIR", tmp_path)
    monkeypatch.setattr(tune, "LADDER", (1, 2))
    for peer in ("litserve", "triton"):
        assert tune.main(["digits", "--p99-ms", "1000", "--budget-s", "0", "--seconds", "1",
                          "--server", peer]) == 0
        recorded = json.loads((tmp_path / "tune" / f"digits-{peer}" / "tune.json").read_text())
        [only] = recorded["candidates"]  # no time for more than the archive's settings
        assert recorded["server"] == peer and only["score"] > 0 and len(only["points"]) == 2
    with pytest.raises(SystemExit):  # a peer's settings are not TorchServe's model-config
        tune.main(["digits", "--p99-ms", "1000", "--server", "triton", "--write"])
    capsys.readouterr()
    assert bench_serve.main(["digits", "--tuned", "--seconds", "1", "--clients", "2", "--sweep",
                             "1.0", "--warmup", "0", "--out", str(tmp_path / "bench")]) == 0
    [digits] = json.loads((tmp_path / "bench" / "served.json").read_text())["results"]
    assert [digits[s]["tuned"] for s in ("torchserve", "litserve", "triton")] == [False, True, True]
    for peer in ("litserve", "triton"):
        assert digits[peer]["closed"]["ok"] > 0
        assert digits[peer]["settings"] == {k: recorded_best(tmp_path, peer)[k] for k in tune.KNOBS}
    out = capsys.readouterr().out
    assert "| digits | triton |" in out and "its tuning" in out and "not tuned" in out


def recorded_best(root, peer: str) -> dict:
    return json.loads((root / "tune" / f"digits-{peer}" / "tune.json").read_text())["best"]
