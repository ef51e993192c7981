"""LabelStudioOracle against a real Label Studio server started for these tests (see label_studio_server.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import FAST_TRAINER, TinyClassifier, blobs
from label_studio_server import Annotator, fresh_server

import lightning_al as al
from lightning_al.label_studio import LabelStudioError, LabelStudioOracle
from lightning_al.oracles import LabelsPending, PartialLabels, Query
from lightning_al.strategies import Entropy

NAMES = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    started = fresh_server(tmp_path_factory)
    yield started
    started.stop()


@pytest.fixture
def annotator(server) -> Annotator:
    return Annotator(server)


def make_dm() -> al.ActiveDataModule:
    return al.ActiveDataModule(blobs(60, seed=0), test_set=blobs(30, seed=1), initial_labelled=9, batch_size=8, seed=0)


def make_oracle(server, title: str, **kwargs) -> LabelStudioOracle:
    kwargs = {"token": server.token, "image_shape": [2, 2], "retries": 1, "backoff": 0.05, **kwargs}
    return LabelStudioOracle(server.url, NAMES, project=title, **kwargs)


def make_loop(output_dir: Path, oracle, rounds: int = 2) -> al.ActiveLearningLoop:
    torch.manual_seed(0)
    return al.ActiveLearningLoop(
        strategy=Entropy(),
        query_size=4,
        rounds=rounds,
        oracle=oracle,
        trainer_kwargs=FAST_TRAINER,
        output_dir=str(output_dir),
        progress=False,
        seed=0,
    )


def truth(dataset_id: int) -> str:
    return NAMES[int(blobs(60, seed=0)[dataset_id][1])]


def annotate_round(annotator: Annotator, project: int, round: int, answer=truth) -> list[int]:
    ids = []
    for task in annotator.tasks(project):
        if task["data"]["round"] == round and not task["annotations"]:
            annotator.annotate(task["id"], [answer(task["data"]["dataset_id"])])
            ids.append(task["data"]["dataset_id"])
    return ids


def test_two_rounds_end_to_end(server, annotator, tmp_path, capsys):
    oracle = make_oracle(server, "two rounds")
    make_loop(tmp_path, oracle).run(TinyClassifier(), make_dm())
    assert "Round 0 needs labels: pushed 4 tasks to" in capsys.readouterr().out
    project = oracle.project_id()
    tasks = annotator.tasks(project)
    assert len(tasks) == 4 and {t["data"]["round"] for t in tasks} == {0}
    for task in tasks:  # the sample inlined, the acquisition score on the task and on its prediction
        assert task["data"]["image"].startswith("data:image/png;base64,")
        assert isinstance(task["data"]["score"], float)
    queried = {t["data"]["dataset_id"] for t in tasks}

    for round in (0, 1):
        labelled = annotate_round(annotator, project, round)
        oracle = make_oracle(server, "two rounds")  # a new process would build a new oracle
        history = make_loop(tmp_path, oracle).run(TinyClassifier(), make_dm(), resume=True)
        if round == 0:
            assert set(labelled) == queried
    assert [row["num_labelled"] for row in history] == [9, 13, 17]
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    labels = state["datamodule"]["pool"]["labels"]
    ids = (state["datamodule"]["pool"]["labelled_round"] > 0).nonzero().flatten().tolist()
    assert len(ids) == 8 and all(NAMES[int(labels[i])] == truth(i) for i in ids)
    assert len(annotator.tasks(project)) == 8  # one task per queried id, none pushed twice


def test_predictions_carry_the_suggestion_and_the_score(server):
    oracle = make_oracle(server, "predictions", dataset=blobs(60, seed=0))
    query = Query(0, torch.tensor([3, 7]), torch.tensor([0.9, 0.4], dtype=torch.double), torch.tensor([2, 0]))
    with pytest.raises(LabelsPending):
        oracle.answer(query)
    headers = {"Authorization": f"Token {server.token}"}
    import requests

    listed = requests.get(
        f"{server.url}/api/tasks/",
        params={"project": oracle.project_id(), "fields": "all"},
        headers=headers,
        timeout=30,
    ).json()["tasks"]
    by_id = {t["data"]["dataset_id"]: t for t in listed}
    for index, score, suggestion in ((3, 0.9, "blue"), (7, 0.4, "red")):
        (prediction,) = by_id[index]["predictions"]
        assert prediction["score"] == pytest.approx(score)
        assert prediction["result"][0]["value"]["choices"] == [suggestion]


def test_a_second_push_creates_no_duplicates(server, annotator, tmp_path):
    oracle = make_oracle(server, "duplicate push", dataset=blobs(60, seed=0), directory=str(tmp_path))
    query = Query(0, torch.tensor([1, 2, 5]), torch.tensor([0.3, 0.2, 0.1], dtype=torch.double))
    with pytest.raises(LabelsPending, match="pushed 3 tasks"):
        oracle.answer(query)
    (tmp_path / "label_studio" / "round_000.json").unlink()  # as if killed before the push was recorded
    again = make_oracle(server, "duplicate push", dataset=blobs(60, seed=0), directory=str(tmp_path))
    with pytest.raises(LabelsPending, match="0 of 3 tasks answered"):
        again.answer(query)
    assert sorted(t["data"]["dataset_id"] for t in annotator.tasks(oracle.project_id())) == [1, 2, 5]


KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, sys.argv[3])
    import test_label_studio as t
    from label_studio_server import Server
    from lightning_al.label_studio import LabelStudioOracle
    from conftest import TinyClassifier
    def killed(self, round, count):  # the tasks are in Label Studio; nothing recorded locally yet
        os.kill(os.getpid(), signal.SIGKILL)
    LabelStudioOracle._mark_pushed = killed
    server = Server(sys.argv[1], t.server_token(), None, 0.0)
    t.make_loop(sys.argv[2], t.make_oracle(server, "killed push")).run(TinyClassifier(), t.make_dm())
    """
)


def server_token() -> str:
    from label_studio_server import TOKEN

    return TOKEN


def test_a_run_killed_between_push_and_save_resumes_without_duplicates(server, annotator, tmp_path):
    tests = str(Path(__file__).parent)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, server.url, str(tmp_path), tests],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "state.pt").exists() or json.loads((tmp_path / "history.json").read_text()) == []
    oracle = make_oracle(server, "killed push")
    project = oracle.project_id()
    assert len(annotator.tasks(project)) == 4
    make_loop(tmp_path, oracle).run(TinyClassifier(), make_dm(), resume=True)  # pushes again: finds all 4
    assert len(annotator.tasks(project)) == 4
    annotate_round(annotator, project, 0)
    history = make_loop(tmp_path, make_oracle(server, "killed push"), rounds=1).run(
        TinyClassifier(), make_dm(), resume=True
    )
    assert [row["num_labelled"] for row in history] == [9, 13]
    assert len(annotator.tasks(project)) == 4


def pushed_query(server, annotator, title: str, ids: list[int], **kwargs) -> tuple[LabelStudioOracle, Query, dict]:
    oracle = make_oracle(server, title, dataset=blobs(60, seed=0), **kwargs)
    query = Query(0, torch.tensor(ids), torch.linspace(1, 0, len(ids), dtype=torch.double))
    with pytest.raises(LabelsPending):
        oracle.answer(query)
    return oracle, query, {t["data"]["dataset_id"]: t["id"] for t in annotator.tasks(oracle.project_id())}


def test_disagreeing_annotations_follow_the_policy(server, annotator):
    oracle, query, task = pushed_query(server, annotator, "disagreement", [0, 1, 2])
    annotator.annotate(task[0], ["red"])
    annotator.annotate(task[0], ["blue"])  # a tie
    for _ in range(2):
        annotator.annotate(task[1], ["green"])
    annotator.annotate(task[1], ["red"])  # 2 against 1
    annotator.annotate(task[2], ["zebra"])  # not a class
    with pytest.raises(ValueError, match="2 problems; no label was applied") as error:
        oracle.answer(query)
    assert f"task {task[0]} (dataset id 0): its annotations disagree ([['blue'], ['red']])" in str(error.value)
    assert f"task {task[2]} (dataset id 2)" in str(error.value) and "zebra" in str(error.value)
    annotator.annotate(task[2], ["blue"])
    annotator.annotate(task[2], ["blue"])  # now blue by majority
    latest = make_oracle(server, "disagreement", dataset=blobs(60, seed=0), on_disagreement="latest")
    assert latest.answer(query).tolist() == [2, 0, 2]  # the last annotation of each task wins
    with pytest.raises(ValueError, match=r"1 problem; .*\n  task \d+ \(dataset id 0\): its annotations disagree"):
        oracle.answer(query)  # majority: green wins 2 to 1, blue 2 to 1; only the red/blue tie is left
    strict = make_oracle(server, "disagreement", dataset=blobs(60, seed=0), on_disagreement="error")
    with pytest.raises(ValueError, match="3 problems"):
        strict.answer(query)


def test_skipped_and_deleted_tasks_return_to_the_pool_or_wait(server, annotator, tmp_path):
    oracle, query, task = pushed_query(server, annotator, "skipped", [4, 5, 6, 8], directory=str(tmp_path))
    annotator.annotate(task[4], ["green"])
    annotator.annotate(task[5], None, cancelled=True)
    annotator.annotate(task[6], ["red"])
    annotator.delete(task[8])
    answer = oracle.answer(query)
    assert isinstance(answer, PartialLabels)
    assert answer.ids.tolist() == [4, 6] and answer.labels.tolist() == [1, 0]
    waiting = make_oracle(server, "skipped", dataset=blobs(60, seed=0), directory=str(tmp_path), on_skipped="requeue")
    with pytest.raises(LabelsPending, match="3 of 4 tasks answered"):
        waiting.answer(query)


def test_a_loop_records_only_what_was_answered(server, annotator, tmp_path):
    oracle = make_oracle(server, "partial loop")
    make_loop(tmp_path, oracle, rounds=1).run(TinyClassifier(), make_dm())
    tasks = annotator.tasks(oracle.project_id())
    skipped = tasks[0]["data"]["dataset_id"]
    annotator.annotate(tasks[0]["id"], None, cancelled=True)
    for t in tasks[1:]:
        annotator.annotate(t["id"], [truth(t["data"]["dataset_id"])])
    history = make_loop(tmp_path, make_oracle(server, "partial loop"), rounds=1).run(
        TinyClassifier(), make_dm(), resume=True
    )
    assert history[0]["num_returned"] == 1 and [row["num_labelled"] for row in history] == [9, 12]
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert int(state["datamodule"]["pool"]["labelled_round"][skipped]) == -1  # back in the unlabelled pool
    assert int(state["loop"]["acquired"]) == 3


def test_wait_polls_until_annotated(server, annotator):
    import threading

    oracle, query, task = pushed_query(server, annotator, "waiting", [10, 11])
    oracle.wait, oracle.poll_interval, oracle.timeout = True, 0.2, 60

    def later():
        for dataset_id, choice in ((10, "green"), (11, "blue")):
            annotator.annotate(task[dataset_id], [choice])

    timer = threading.Timer(0.5, later)
    timer.start()
    assert oracle.answer(query).tolist() == [1, 2]
    timer.join()
    oracle.timeout = 0.3
    stuck = Query(1, torch.tensor([12]), None)
    with pytest.raises(LabelsPending, match="0 of 1 tasks answered"):
        oracle.answer(stuck)  # pushed, then nobody annotates: stops after the timeout


def test_the_token_stays_out_of_every_file_and_message(server, annotator, tmp_path, capsys):
    oracle = make_oracle(server, "token check")
    make_loop(tmp_path, oracle, rounds=1).run(TinyClassifier(), make_dm())
    annotate_round(annotator, oracle.project_id(), 0)
    make_loop(tmp_path, make_oracle(server, "token check"), rounds=1).run(TinyClassifier(), make_dm(), resume=True)
    assert server.token not in repr(oracle) and server.token not in capsys.readouterr().out
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert server.token.encode() not in path.read_bytes(), path


def test_bad_token_and_server_down_give_clear_errors(server):
    wrong = "0" * 40
    oracle = LabelStudioOracle(server.url, NAMES, project="bad token", token=wrong, retries=0)
    with pytest.raises(
        LabelStudioError, match=rf"Label Studio at {server.url} refused the legacy API token \(401\)"
    ) as error:
        oracle.project_id()
    assert wrong not in str(error.value)
    from label_studio_server import free_port

    down = f"http://127.0.0.1:{free_port()}"
    oracle = LabelStudioOracle(down, NAMES, project="server down", token=server.token, retries=2, backoff=0.01)
    with pytest.raises(LabelStudioError, match=rf"Could not reach Label Studio at {down} \(GET /api/projects/"):
        oracle.answer(Query(0, torch.tensor([1]), None))


def test_missing_token_and_segmentation_are_refused(monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    with pytest.raises(ValueError, match="LABEL_STUDIO_API_KEY"):
        LabelStudioOracle("http://127.0.0.1:1", NAMES)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "x" * 40)
    with pytest.raises(ValueError, match="FileOracle"):
        LabelStudioOracle("http://127.0.0.1:1", NAMES, task=al.tasks.Segmentation(num_classes=3))
    assert os.environ["LABEL_STUDIO_API_KEY"] not in repr(LabelStudioOracle("http://127.0.0.1:1", NAMES))


def personal_access_token(server) -> str:
    """A personal access token made as a user would in the UI: log in, then create one."""
    import requests
    from label_studio_server import PASSWORD, USER

    session = requests.Session()
    session.get(f"{server.url}/user/login/", timeout=30)
    csrf = session.cookies["csrftoken"]
    session.post(
        f"{server.url}/user/login/",
        data={"email": USER, "password": PASSWORD, "csrfmiddlewaretoken": csrf},
        headers={"Referer": f"{server.url}/user/login/"},
        timeout=30,
    )
    answer = session.post(f"{server.url}/api/token/", headers={"X-CSRFToken": session.cookies["csrftoken"]}, timeout=30)
    assert answer.status_code in (200, 201), answer.text
    return answer.json()["token"]


def test_a_personal_access_token_is_exchanged_and_refreshed(server):
    token = personal_access_token(server)
    assert token.count(".") == 2
    oracle = LabelStudioOracle(server.url, NAMES, project="personal token", token=token, image_shape=[2, 2])
    oracle.dataset = blobs(60, seed=0)
    with pytest.raises(LabelsPending, match="pushed 2 tasks"):
        oracle.answer(Query(0, torch.tensor([1, 2]), None))
    oracle.client._access = "expired.access.token"  # as after its 5 minutes: refreshed on the 401
    assert oracle.round_tasks(0).keys() == {1, 2}
    assert oracle.client._access != "expired.access.token"


def test_multi_label_tasks_take_several_choices_or_none(server, annotator):
    task_kind = al.tasks.MultiLabel(num_labels=3)
    oracle = make_oracle(server, "multi label", dataset=blobs(60, seed=0), task=task_kind)
    predicted = torch.tensor([[1, 0, 1], [0, 0, 0]], dtype=torch.uint8)
    with pytest.raises(LabelsPending, match="pushed 2 tasks"):
        oracle.answer(Query(0, torch.tensor([3, 4]), torch.tensor([0.5, 0.1], dtype=torch.double), predicted))
    project = oracle.project_id()
    import requests

    config = requests.get(
        f"{server.url}/api/projects/{project}/", headers={"Authorization": f"Token {server.token}"}, timeout=30
    ).json()["label_config"]
    assert 'choice="multiple"' in config and 'value="none"' in config
    task = {t["data"]["dataset_id"]: t["id"] for t in annotator.tasks(project)}
    annotator.annotate(task[3], ["red", "blue"])
    annotator.annotate(task[4], ["none"])
    labels = oracle.answer(Query(0, torch.tensor([3, 4]), None))
    assert labels.tolist() == [[1, 0, 1], [0, 0, 0]]
